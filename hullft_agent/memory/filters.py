"""SQL filters of memory queries: values are rendered as escaped literals, user clauses are fenced.

Every filter the memory builds starts with the namespace equality; a caller's `where` clause is
checked lexically (balanced parentheses outside string literals, no comments, no statement
separators, no unterminated literal) and then ANDed inside its own parentheses, so it can narrow
the namespace filter but never widen it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lancedb.expr import Expr, col, lit

from hullft_agent.config import LearnFrom
from hullft_agent.errors import InvalidWhereError

MAX_WHERE_CHARS = 4096


def check_where_syntax(where: Any) -> str:
    """Lexical safety checks of a user `where` clause; return it stripped or raise InvalidWhereError."""
    if not isinstance(where, str):
        raise InvalidWhereError(f"where must be a str, got {type(where).__name__}")
    clause = where.strip()
    if not clause:
        raise InvalidWhereError("where is empty; pass None for no extra filter")
    if len(clause) > MAX_WHERE_CHARS:
        raise InvalidWhereError(f"where is longer than {MAX_WHERE_CHARS} characters")
    if any(ord(ch) < 32 and ch not in "\t\n" for ch in clause):
        raise InvalidWhereError("where contains control characters")
    depth = 0
    quote: str | None = None
    i = 0
    n = len(clause)
    while i < n:
        ch = clause[i]
        if quote is not None:
            if ch == quote:
                if i + 1 < n and clause[i + 1] == quote:  # doubled quote: an escaped quote
                    i += 2
                    continue
                quote = None
            i += 1
            continue
        if ch in ("'", '"', "`"):
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise InvalidWhereError(f"where has an unmatched ')' at position {i}: {clause!r:.120}")
        elif ch == ";":
            raise InvalidWhereError("where must be a single boolean expression (no ';')")
        elif clause.startswith("--", i) or clause.startswith("/*", i) or clause.startswith("*/", i):
            raise InvalidWhereError("where must not contain SQL comments ('--', '/*', '*/')")
        i += 1
    if quote is not None:
        raise InvalidWhereError(f"where has an unterminated {quote} literal: {clause!r:.120}")
    if depth != 0:
        raise InvalidWhereError(f"where has {depth} unclosed '(': {clause!r:.120}")
    return clause


def eq(column: str, value: Any) -> Expr:
    return col(column) == lit(value)


def scope(
    namespace: str | None,
    *,
    task: str | None = None,
    episode_id: str | None = None,
    exclude_episode: str | None = None,
    ids: Sequence[str] | None = None,
    kind: str | None = None,
    step_range: tuple[int, int] | None = None,
    episodes: Iterable[str] | None = None,
) -> str | None:
    """SQL of the AND of the given equalities (None: no condition on that column)."""
    parts: list[Expr] = []
    if namespace is not None:
        parts.append(eq("namespace", namespace))
    if task is not None:
        parts.append(eq("task", task))
    if episode_id is not None:
        parts.append(eq("episode_id", episode_id))
    if exclude_episode is not None:
        parts.append(col("episode_id") != lit(exclude_episode))
    if ids is not None:
        parts.append(col("id").isin([str(i) for i in ids]))
    if episodes is not None:
        parts.append(col("episode_id").isin([str(e) for e in episodes]))
    if kind is not None:
        parts.append(eq("kind", kind))
    if step_range is not None:
        lo, hi = step_range
        parts.append((col("step") >= lit(int(lo))) & (col("step") < lit(int(hi))))
    if not parts:
        return None
    expr = parts[0]
    for part in parts[1:]:
        expr = expr & part
    return expr.to_sql()


def learn_from_sql(learn_from: LearnFrom) -> str | None:
    """SQL of what a `LearnFrom` keeps (its own `where` is not included: it is checked like any user clause).

    Actors live in the row's metadata JSON, which the memory writes with `json.dumps` defaults, so
    an actor is matched as the literal text `"actor": "<name>"`; actor names are validated lowercase
    words (no quotes or wildcards), so the pattern cannot match anything else.
    """
    parts: list[Expr] = []
    if learn_from.kinds is not None:
        parts.append(col("kind").isin(list(learn_from.kinds)))
    if learn_from.outcomes is not None:
        parts.append(col("outcome").isin(list(learn_from.outcomes)))
    if learn_from.min_reward is not None:
        parts.append(col("reward") >= lit(float(learn_from.min_reward)))
    sql = None
    if parts:
        expr = parts[0]
        for part in parts[1:]:
            expr = expr & part
        sql = expr.to_sql()
    if learn_from.actors is not None:
        actors = " OR ".join(f'metadata LIKE \'%"actor": "{a}"%\'' for a in learn_from.actors)
        sql = combine(sql, actors)
    return sql


def combine(base: str | None, where: str | None) -> str | None:
    """`(base) AND (where)`; `where` must already have passed check_where_syntax."""
    if where is None:
        return base
    if base is None:
        return f"({where})"
    return f"({base}) AND ({where})"
