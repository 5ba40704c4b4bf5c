"""What a store item is on disk and what input is valid: the table schema, item ids, namespace paths,
JSON values, TTLs and LangGraph's search filters.

One row per item (a mutable keyed record, unlike the append-only trajectory table): the tenant (the
memory namespace the store was opened for), the LangGraph namespace as a dotted path (LangGraph
forbids dots in labels, so the path is unambiguous), the key, the value as JSON, the embedded texts
and their vectors (one vector per text; a search scores an item by its best text), and the
created/updated/expiry times.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from langgraph.store.base import (
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
    validate_op_namespace,
)

from hullft_agent.errors import InvalidArgumentError, InvalidTypeError

STORE_SCHEMA_VERSION = "1"
#: Schema metadata keys: the store's schema version, embedder and vector dimension (0: no vectors).
META_STORE = "hullft.store_schema"
META_EMBEDDER = "hullft.embedder"
META_DIM = "hullft.dim"
#: Lance field metadata that makes concurrent inserts of the same id conflict (and retry) instead
#: of both landing: what keeps one row per item when several processes write the same new key.
PRIMARY_KEY = {"lance-schema:unenforced-primary-key": "true"}

SEPARATOR = "."
OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")


def item_schema(dim: int, embedder: str) -> pa.Schema:
    """The items table: `vector` is a list of unit vectors (one per embedded text), absent without an index."""
    fields = [
        pa.field("id", pa.string(), nullable=False, metadata=PRIMARY_KEY),
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("namespace", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("value", pa.string(), nullable=False),
        pa.field("texts", pa.list_(pa.string()), nullable=True),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("expires_at", pa.timestamp("us", tz="UTC"), nullable=True),
        pa.field("ttl_minutes", pa.float64(), nullable=True),
    ]
    if dim:
        fields.append(pa.field("vector", pa.list_(pa.list_(pa.float32(), dim)), nullable=True))
    meta = {META_STORE: STORE_SCHEMA_VERSION, META_EMBEDDER: embedder, META_DIM: str(dim)}
    return pa.schema(fields, metadata=meta)


def schema_stamp(schema: pa.Schema) -> dict[str, str] | None:
    """The store settings stamped on a table, or None when the table is not a store's."""
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    return meta if META_STORE in meta else None


def item_id(tenant: str, namespace: tuple[str, ...], key: str) -> str:
    """A stable id per (tenant, namespace, key): the row's primary key, never shared across tenants."""
    canonical = json.dumps([tenant, list(namespace), key], ensure_ascii=False)
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def encode_namespace(namespace: tuple[str, ...]) -> str:
    return SEPARATOR.join(namespace)


def decode_namespace(path: str) -> tuple[str, ...]:
    return tuple(path.split(SEPARATOR))


# ---------------------------------------------------------------------------------------- validation


def _check_labels(labels: tuple[str, ...]) -> None:
    """LangGraph's own label rules (strings, no dots, not empty) plus valid Unicode."""
    for label in labels:
        if isinstance(label, str):
            try:
                label.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidNamespaceError(f"namespace label {label!r} in {labels} is not valid Unicode") from None


def check_op(op: Any) -> None:
    """Validate one op before anything of its batch runs: LangGraph's error types for namespaces,
    `InvalidArgumentError`/`InvalidTypeError` (ValueError/TypeError) for everything else."""
    if not isinstance(op, (GetOp, PutOp, SearchOp, ListNamespacesOp)):
        raise InvalidTypeError(f"unknown store operation {type(op).__name__}; expected GetOp, PutOp, SearchOp or "
                               "ListNamespacesOp")
    for name in ("namespace", "namespace_prefix"):
        labels = getattr(op, name, None)
        if labels is not None and not isinstance(labels, tuple):
            raise InvalidNamespaceError(f"{name} must be a tuple of strings, got {type(labels).__name__}")
    validate_op_namespace(op)
    if isinstance(op, (GetOp, PutOp)):
        _check_labels(op.namespace)
        check_key(op.key)
    if isinstance(op, PutOp):
        if not op.namespace:
            raise InvalidNamespaceError("Namespace cannot be empty.")
        if op.namespace[0] == "langgraph":
            raise InvalidNamespaceError(f'Root label for namespace cannot be "langgraph". Got: {op.namespace}')
        if op.value is not None:
            encode_value(op.value, op.namespace, op.key)
        check_ttl(op.ttl)
        if op.index is not None and op.index is not False and (
            not isinstance(op.index, list) or not all(isinstance(p, str) and p for p in op.index)
        ):
            raise InvalidArgumentError(f"index must be False, None or a list of field paths, got {op.index!r}")
    elif isinstance(op, SearchOp):
        _check_labels(op.namespace_prefix)
        check_page(op.limit, op.offset)
        check_filter(op.filter)
        if op.query is not None and not isinstance(op.query, str):
            raise InvalidTypeError(f"query must be a str or None, got {type(op.query).__name__}")
    elif isinstance(op, ListNamespacesOp):
        check_page(op.limit, op.offset)
        for condition in op.match_conditions or ():
            if not isinstance(condition, MatchCondition) or condition.match_type not in ("prefix", "suffix"):
                raise InvalidArgumentError(f"match conditions are MatchCondition('prefix'|'suffix', path), got "
                                           f"{condition!r}")
            _check_labels(tuple(condition.path))
        depth = op.max_depth
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise InvalidArgumentError(f"max_depth must be an integer >= 1 or None, got {depth!r}")


def check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise InvalidTypeError(f"a store key must be a str, got {type(key).__name__}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"key {key!r} is not valid Unicode") from None
    return key


def check_page(limit: Any, offset: Any) -> None:
    for name, value in (("limit", limit), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgumentError(f"{name} must be an integer >= 0, got {value!r}")


def check_ttl(ttl: Any) -> float | None:
    """A TTL in minutes: a positive finite number, or None (never expires)."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
        raise InvalidArgumentError(f"ttl must be a positive number of minutes or None, got {ttl!r}")
    return float(ttl)


def _check_json(value: Any, where: str) -> None:
    """Only JSON with string keys round-trips: json.dumps would turn int keys into strings silently."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidArgumentError(f"{where}: keys must be strings, got {k!r} ({type(k).__name__})")
            _check_json(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]")


def encode_value(value: Any, namespace: tuple[str, ...], key: str) -> str:
    """The value as JSON text, or a clear error naming the item: values are JSON objects (string keys,
    finite numbers, valid Unicode); tuples are stored as lists."""
    where = f"value of {namespace}/{key!r}"
    if not isinstance(value, Mapping):
        raise InvalidTypeError(f"{where} must be a dict (a JSON object), got {type(value).__name__}")
    _check_json(value, where)
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{where} is not JSON-serialisable: {exc}") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{where} holds a string that is not valid Unicode (a lone surrogate)") from None
    return text


# ---------------------------------------------------------------------------------------- filters


def check_filter(filter: Any) -> None:
    """A LangGraph filter: {field: value | {"$op": value, ...}}; operators are $eq $ne $gt $gte $lt $lte."""
    if filter is None:
        return
    if not isinstance(filter, Mapping):
        raise InvalidTypeError(f"filter must be a dict, got {type(filter).__name__}")
    for field, condition in filter.items():
        if not isinstance(field, str):
            raise InvalidArgumentError(f"filter fields must be strings, got {field!r}")
        _check_json(condition, f"filter on {field!r}")
        if isinstance(condition, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in condition):
            for op, operand in condition.items():
                if op not in OPERATORS:
                    raise InvalidArgumentError(f"unsupported filter operator {op!r} on {field!r}; expected one of "
                                               f"{list(OPERATORS)}")
                if op in ("$gt", "$gte", "$lt", "$lte") and (
                    isinstance(operand, bool) or not isinstance(operand, (int, float, str))
                ):
                    raise InvalidArgumentError(f"{op} on {field!r} compares with a number or a string, got "
                                               f"{operand!r}")


def matches(value: dict[str, Any], filter: Mapping[str, Any] | None) -> bool:
    """Whether an item's value passes a filter, with LangGraph's semantics: a plain value must be equal
    (a dict operand: every key it names must match, recursively; a list operand: same length and
    elements); operators compare the field's value. Ordered operators compare numbers with numbers
    and strings with strings; a missing field or another type does not match (no error)."""
    if not filter:
        return True
    return all(_match(value.get(field), condition) for field, condition in filter.items())


def _match(actual: Any, condition: Any) -> bool:
    if isinstance(condition, Mapping):
        if any(k.startswith("$") for k in condition):
            return all(_apply(actual, op, operand) for op, operand in condition.items())
        return isinstance(actual, dict) and all(_match(actual.get(k), v) for k, v in condition.items())
    if isinstance(condition, (list, tuple)):
        return (isinstance(actual, list) and len(actual) == len(condition)
                and all(_match(a, c) for a, c in zip(actual, condition, strict=True)))
    return actual == condition


def _ordered(actual: Any, operand: Any) -> bool:
    """Whether `actual` and `operand` can be ordered: both numbers (bools excluded) or both strings."""
    if isinstance(operand, str):
        return isinstance(actual, str)
    return isinstance(actual, (int, float)) and not isinstance(actual, bool)


def _apply(actual: Any, op: str, operand: Any) -> bool:
    if op == "$eq":
        return actual == operand
    if op == "$ne":
        return actual != operand
    if not _ordered(actual, operand):
        return False
    if op == "$gt":
        return actual > operand
    if op == "$gte":
        return actual >= operand
    if op == "$lt":
        return actual < operand
    return actual <= operand  # $lte (check_filter admits nothing else)


def namespace_matches(namespace: tuple[str, ...], condition: MatchCondition) -> bool:
    """A prefix or suffix condition of `list_namespaces`; '*' in its path matches any one label."""
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    part = namespace[: len(path)] if condition.match_type == "prefix" else namespace[len(namespace) - len(path):]
    return all(p == "*" or p == n for p, n in zip(path, part, strict=True))
