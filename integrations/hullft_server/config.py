"""Server settings and API keys → tenant namespaces."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from pydantic import Field, field_validator

from hullft_agent.config import StrictConfig
from hullft_agent.errors import InvalidArgumentError
from hullft_agent.memory.schema import check_namespace


class ServerConfig(StrictConfig):
    """How the server admits, times and scopes requests (the model's adaptation is the adapter's config)."""

    model_name: str | None = Field(None, description="the model id clients send and /v1/models lists "
                                   "(default: the runtime's model name)")
    api_keys: dict[str, str] = Field(default_factory=dict, description="API key → namespace; empty: no auth, "
                                     "every request uses `namespace`")
    namespace: str | None = Field(None, description="the namespace of unauthenticated requests "
                                  "(None: the memory's own)")
    max_queue: int = Field(16, ge=0, description="requests that may wait for the model; more get 429")
    request_timeout: float = Field(300.0, gt=0, description="seconds a request may wait + adapt + generate")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none")
    context_messages: int = Field(4, ge=1, description="adaptation context = the last N non-system messages")
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body accepted")

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, keys: dict[str, str]) -> dict[str, str]:
        for key, namespace in keys.items():
            if not key or any(ch.isspace() for ch in key) or not key.isprintable():
                raise ValueError("an API key must be a non-empty printable string without spaces")
            check_namespace(namespace, "an API key's namespace")
        return keys

    def tenant(self, authorization: str | None) -> str | None:
        """The namespace of a request's `Authorization: Bearer KEY`; `PermissionError` for a missing/unknown key.

        Every configured key is compared in constant time, so timing does not reveal a key prefix.
        """
        if not self.api_keys:
            return self.namespace
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise PermissionError("this server needs an API key: send 'Authorization: Bearer <key>'")
        found = None
        for key, namespace in self.api_keys.items():
            if hmac.compare_digest(key.encode(), token.encode()):
                found = namespace
        if found is None:
            raise PermissionError("the API key is not valid for this server")
        return found


def parse_api_keys(specs: Iterable[str]) -> dict[str, str]:
    """`KEY` or `KEY=NAMESPACE` strings → {key: namespace}; a bare key gets a namespace derived from its hash."""
    keys: dict[str, str] = {}
    for spec in specs:
        key, sep, namespace = spec.partition("=")
        key = key.strip()
        if not key:
            raise InvalidArgumentError(f"empty API key in {spec!r}")
        namespace = namespace.strip() if sep else "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]
        if key in keys and keys[key] != namespace:
            raise InvalidArgumentError(f"API key given twice with different namespaces: {keys[key]!r}, {namespace!r}")
        keys[key] = check_namespace(namespace, f"the namespace of API key {key[:4]}…")
    return keys
