"""A LangGraph long-term store on LanceDB whose items a `TestTimeAdapter` can learn from (docs/store.md)."""

from langchain_hullft.store.candidates import STORE_KIND, StoreCandidates
from langchain_hullft.store.lancedb_store import DEFAULT_TABLE, LanceDBStore

__all__ = ["DEFAULT_TABLE", "STORE_KIND", "LanceDBStore", "StoreCandidates"]
