"""Forced tool calls: the model writes the call inside a fixed frame, token by token, under a mask.

`tool_choice='required'` or a named tool must give a call, and a small model left to itself rarely
writes valid JSON. So the frame (`<tool_call>`, the keys, quotes, commas, braces) is fed to the model
as forced text, and only the values are sampled, each restricted to the tokens that keep it valid:
the tool's name among the tools, a string's characters up to its closing quote, a number's digits,
one of an enum's values. For a simple argument schema (an object whose properties are strings,
numbers, integers, booleans or enums of those) the call is therefore always valid JSON of the right
types; for any other schema the arguments are sampled freely up to the first complete JSON value and
parsed like any answer. One KV cache runs through the whole call, so forcing costs no extra prompt pass.
"""

from __future__ import annotations

import json
import math
import re
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hullft_agent.runtime.generation import (
    GenerationStats,
    SamplingParams,
    _processors,
    cache_argument,
    model_device,
)
from hullft_agent.runtime.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, schema_types

#: Most characters of a forced number.
MAX_NUMBER_CHARS = 16
_INTEGER_PREFIX = re.compile(r"-?(0|[1-9][0-9]*)?")
_NUMBER_PREFIX = re.compile(r"-?((0|[1-9][0-9]*)(\.[0-9]*)?)?")
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")
_NUMBER_CHARS = frozenset("-0123456789.")
#: A token starting with one of these ends a number or an enum value (the frame writes what follows).
_TERMINATORS = frozenset(",}] \n\t")
#: Tries at a byte of a multi-byte character inside a string before only whole characters are allowed.
_BYTE_TRIES = 8


@dataclass(frozen=True)
class ValueSpec:
    """How one forced argument is written: its JSON kind, an enum's values (as JSON text), string bounds."""

    kind: str  # "string" | "integer" | "number" | "enum"
    options: tuple[str, ...] = ()
    min_length: int = 1
    max_length: int | None = None


def simple_arguments(parameters: Any) -> list[tuple[str, ValueSpec]] | None:
    """The arguments a forced call writes, in schema order, when the schema is simple enough to force.

    The required properties are written (every property when the schema names none as required). Each
    must be a string, number, integer or boolean, or an enum of JSON scalars (a type list that adds only
    "null" counts as the type). None when any of them is something else (objects, arrays, unions).
    A string has at least `minLength` characters (default 1: a required text is not left empty).
    """
    if not isinstance(parameters, Mapping):
        return None
    properties = parameters.get("properties") or {}
    if not isinstance(properties, Mapping):
        return None
    required = [k for k in parameters.get("required") or [] if k in properties]
    names = required if parameters.get("required") else list(properties)
    out = []
    for name in [k for k in properties if k in names]:
        schema = properties[name]
        if not isinstance(schema, Mapping):
            return None
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            if not all(v is None or isinstance(v, (str, int, float, bool)) for v in enum):
                return None
            out.append((name, ValueSpec("enum", tuple(json.dumps(v, ensure_ascii=False) for v in enum))))
            continue
        types = [t for t in schema_types(schema) if t != "null"]
        if len(types) != 1 or types[0] not in ("string", "integer", "number", "boolean"):
            return None
        kind = types[0]
        if kind == "boolean":
            out.append((name, ValueSpec("enum", ("true", "false"))))
        elif kind == "string":
            low, high = schema.get("minLength", 1), schema.get("maxLength")
            out.append((name, ValueSpec("string", min_length=int(low) if isinstance(low, int) else 1,
                                        max_length=int(high) if isinstance(high, int) else None)))
        else:
            out.append((name, ValueSpec(kind)))
    return out


def call_frame(name: str, arguments: Sequence[str] = ()) -> str:
    """The forced text of a call with empty values (to size the context the call needs)."""
    args = ", ".join(f"{json.dumps(a, ensure_ascii=False)}: " for a in arguments)
    return f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(name)}, "arguments": {{{args}}}}}\n{TOOL_CALL_CLOSE}'


def forced_reserve(tokenizer: Any, tools: Sequence[Mapping[str, Any]], name: str | None) -> int:
    """Tokens the forced frame of the largest possible call takes (kept free in the context)."""
    frames = []
    for tool in tools:
        function = tool["function"]
        if name is not None and function["name"] != name:
            continue
        spec = simple_arguments(function.get("parameters"))
        frames.append(call_frame(function["name"], [a for a, _ in spec or []]))
    return max((len(tokenizer(f, add_special_tokens=False)["input_ids"]) for f in frames), default=0)


# ---------------------------------------------------------------------------------------------- vocabulary
class Vocabulary:
    """Every token's text on its own, and the token sets the value grammars need (built once per tokenizer)."""

    def __init__(self, tokenizer: Any, size: int) -> None:
        n = min(len(tokenizer), size)
        self.pieces: list[str] = list(tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False))
        self.pieces += [""] * (size - n)
        special = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or [] if int(i) < size}
        special |= {i for i in range(n, size)}
        self.size = size
        body = torch.zeros(size, dtype=torch.bool)
        whole = torch.zeros(size, dtype=torch.bool)
        close = torch.zeros(size, dtype=torch.bool)
        ends = torch.zeros(size, dtype=torch.bool)
        free = torch.ones(size, dtype=torch.bool)
        self.number_ids: list[int] = []
        for i, piece in enumerate(self.pieces):
            if i in special or not piece:
                free[i] = False
                continue
            if piece[0] == '"':
                close[i] = True
            elif '"' not in piece and "\\" not in piece and not any(ord(c) < 32 or ord(c) == 127 for c in piece):
                body[i] = True
                whole[i] = "\ufffd" not in piece
            if piece[0] in _TERMINATORS:
                ends[i] = True
            if set(piece) <= _NUMBER_CHARS:
                self.number_ids.append(i)
        self.string_body, self.string_close, self.terminators, self.free = body, close, ends, free
        #: string tokens that are whole characters on their own (no byte of a multi-byte one)
        self.whole = whole

    def mask(self, ids: Sequence[int]) -> torch.Tensor:
        out = torch.zeros(self.size, dtype=torch.bool)
        if ids:
            out[list(ids)] = True
        return out


_VOCABULARIES: weakref.WeakKeyDictionary[Any, Vocabulary] = weakref.WeakKeyDictionary()


def vocabulary(tokenizer: Any, size: int) -> Vocabulary:
    """The tokenizer's `Vocabulary` for a model with `size` logits (cached while the tokenizer lives)."""
    try:
        cached = _VOCABULARIES.get(tokenizer)
    except TypeError:  # a tokenizer that cannot be weakly referenced: build it every time
        return Vocabulary(tokenizer, size)
    if cached is None or cached.size != size:
        cached = Vocabulary(tokenizer, size)
        _VOCABULARIES[tokenizer] = cached
    return cached


# ---------------------------------------------------------------------------------------------- decoding
class _Stop(Exception):
    """Generation must end (budget, context, time limit or cancellation); the reason is in the stats."""


class ForcedDecoder:
    """One KV cache through a call: forced text is fed, values are sampled token by token under masks."""

    def __init__(self, model: Any, tokenizer: Any, prompt_ids: list[int], params: SamplingParams, *,
                 max_total: int | None, stats: GenerationStats, should_stop: Callable[[], bool] | None) -> None:
        self.model, self.tokenizer, self.params, self.stats = model, tokenizer, params, stats
        self.max_total, self.should_stop = max_total, should_stop
        self.start = time.perf_counter()
        self.device = model_device(model)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(params.seed))
        self.processors = _processors(params)
        self.cache_kw = cache_argument(model)
        self.prompt_len = len(prompt_ids)
        self.ids: list[int] = []
        self.past: Any = None
        self.logits: torch.Tensor | None = None
        self.sampled = 0
        self._feed(prompt_ids)
        self.vocab = vocabulary(tokenizer, int(self.logits.shape[-1]))

    def _feed(self, ids: list[int]) -> None:
        if not ids:
            return
        if self.max_total is not None and len(self.ids) + len(ids) > self.max_total:
            self.stats.finish_reason = "length"
            raise _Stop
        tensor = torch.tensor([ids], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=tensor, use_cache=True, **{self.cache_kw: self.past})
        self.past = getattr(out, self.cache_kw)
        self.logits = out.logits[:, -1, :].float()
        self.ids += ids

    def force(self, text: str) -> None:
        """Feed `text` as if the model had written it."""
        self._feed(list(self.tokenizer(text, add_special_tokens=False)["input_ids"]))

    def pick(self, allowed: torch.Tensor, budgeted: bool = True) -> int:
        """Sample (greedy at temperature 0) one token among `allowed`; it is not fed yet. A `budgeted`
        pick stops the call once `max_new_tokens` tokens were taken."""
        if self.should_stop is not None and self.should_stop():
            self.stats.finish_reason = "cancelled"
            raise _Stop
        if self.params.time_limit is not None and time.perf_counter() - self.start > self.params.time_limit:
            self.stats.finish_reason = "time_limit"
            raise _Stop
        if budgeted and self.sampled >= self.params.max_new_tokens:
            self.stats.finish_reason = "length"
            raise _Stop
        if not bool(allowed.any()):  # a dead end of the grammar: the value ends here
            raise _Stop
        scores = self.logits.masked_fill(~allowed.to(self.logits.device).unsqueeze(0), -math.inf)
        if len(self.processors):  # after the mask, so top_p keeps allowed tokens
            scores = self.processors(torch.tensor([self.ids], device=self.device), scores)
        if self.params.temperature > 0:
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self.generator)
        else:
            token = torch.argmax(scores, dim=-1, keepdim=True)
        return int(token.item())

    def take(self, token: int, budgeted: bool = True) -> None:
        """Feed a picked token (a `budgeted` one counts against the call's `max_new_tokens`)."""
        self._feed([token])
        self.sampled += int(budgeted)

    # ------------------------------------------------------------------ values
    def string(self, spec: ValueSpec, max_tokens: int) -> str:
        """A JSON string: the opening quote is forced, then characters until the model closes it (or
        `max_tokens` tokens, or `maxLength` characters, are written: then the quote is forced).

        A token that is part of a multi-byte character decodes to U+FFFD until the character is
        complete; such a token is taken only while the text stays valid UTF-8 with at most one
        unfinished character at its end (after a few tries, an unfinished character is left out of
        the text and only whole-character tokens are allowed).
        """
        self.force('"')
        vocab = self.vocab
        value_ids: list[int] = []
        text = ""
        taken = 0
        try:
            while taken < max_tokens and self.sampled < self.params.max_new_tokens \
                    and (spec.max_length is None or len(text) < spec.max_length):
                allowed = vocab.string_body.clone()
                if len(text.rstrip("\ufffd")) >= spec.min_length:
                    allowed |= vocab.string_close
                unfinished = text.endswith("\ufffd")
                token, grown = None, text
                for _ in range(_BYTE_TRIES):
                    candidate = self.pick(allowed)
                    if vocab.string_close[candidate]:
                        token = candidate
                        break
                    grown = self.tokenizer.decode([*value_ids, candidate], skip_special_tokens=True)
                    if "\ufffd" not in grown[:-1]:
                        token = candidate
                        break
                    allowed[candidate] = False
                if token is None:
                    while unfinished and value_ids:  # no byte completes the character: leave it out of the text
                        value_ids.pop()
                        text = self.tokenizer.decode(value_ids, skip_special_tokens=True)
                        unfinished = text.endswith("\ufffd")
                    allowed = vocab.whole.clone()
                    if len(text) >= spec.min_length:
                        allowed |= vocab.string_close
                    token = self.pick(allowed)
                    grown = self.tokenizer.decode([*value_ids, token], skip_special_tokens=True)
                if vocab.string_close[token]:
                    break
                self.take(token)
                taken += 1
                value_ids.append(token)
                text = grown
        except _Stop:
            pass  # the value is closed below; the caller stops at its next step
        text = text.rstrip("\ufffd")  # an unfinished multi-byte character
        self._try_force('"')
        return json.dumps(text, ensure_ascii=False)

    def number(self, spec: ValueSpec) -> str:
        """A JSON number (an integer for 'integer'), digits sampled until the model ends it, up to
        `MAX_NUMBER_CHARS` characters (not counted against `max_new_tokens`: it is bounded); one cut
        short is completed ("-" → "-0")."""
        prefix, complete = (_INTEGER_PREFIX, _INTEGER) if spec.kind == "integer" else (_NUMBER_PREFIX, _NUMBER)
        text = ""
        try:
            while len(text) < MAX_NUMBER_CHARS:
                cands = [i for i in self.vocab.number_ids if prefix.fullmatch(text + self.vocab.pieces[i])]
                done = bool(complete.fullmatch(text))
                allowed = self.vocab.mask(cands)
                if done:
                    allowed |= self.vocab.terminators
                if not bool(allowed.any()):
                    break
                token = self.pick(allowed, budgeted=False)
                if token not in cands:
                    break
                self.take(token, budgeted=False)
                text += self.vocab.pieces[token]
        except _Stop:
            pass
        if not complete.fullmatch(text):  # cut short: finish it the shortest way ("-" → "-0", "1." → "1.0")
            text += "0"
            self._try_force("0")
        return text

    def enum(self, spec: ValueSpec) -> str:
        """One of `spec.options` (JSON texts), written token by token along the options' prefixes (not
        counted against `max_new_tokens`: it is bounded)."""
        options = spec.options
        pool = [i for i, p in enumerate(self.vocab.pieces) if p and self.vocab.free[i] and any(p in o for o in options)]
        text = ""
        while True:
            cands = [i for i in pool if any(o.startswith(text + self.vocab.pieces[i]) for o in options)]
            done = text in options
            if done and not any(o != text and o.startswith(text) for o in options):
                return text
            allowed = self.vocab.mask(cands)
            if done:
                allowed |= self.vocab.terminators
            try:
                if not cands:
                    raise _Stop
                token = self.pick(allowed, budgeted=False)
            except _Stop:
                if done:
                    return text
                rest = next(o for o in options if o.startswith(text))[len(text):]
                self._try_force(rest)
                return text + rest
            if token not in cands:
                return text
            self.take(token, budgeted=False)
            text += self.vocab.pieces[token]

    def free_json(self) -> str:
        """`{` forced, then sampled freely until the text is a complete JSON object (or holds
        `</tool_call>`, or the budget ends)."""
        decoder = json.JSONDecoder()
        value_ids: list[int] = []
        text = "{"
        try:
            self.force("{")  # the arguments are an object
            while True:
                token = self.pick(self.vocab.free)
                self.take(token)
                value_ids.append(token)
                text = "{" + self.tokenizer.decode(value_ids, skip_special_tokens=True)
                if TOOL_CALL_CLOSE in text:
                    return text.split(TOOL_CALL_CLOSE, 1)[0]
                body = text.lstrip()
                if body.startswith(("{", "[")):
                    try:
                        _, end = decoder.raw_decode(body)
                    except json.JSONDecodeError:
                        continue
                    return body[:end]
        except _Stop:
            return text

    def _try_force(self, text: str) -> None:
        try:
            self.force(text)
        except _Stop:
            pass


def forced_tool_call(model: Any, tokenizer: Any, prompt_ids: list[int], tools: Sequence[Mapping[str, Any]],
                     name: str | None, params: SamplingParams, *, max_total: int | None, stats: GenerationStats,
                     should_stop: Callable[[], bool] | None = None) -> str:
    """Write one call of the tool `name` (None: the model picks one of `tools`) after `prompt_ids`.

    Returns the call's text, `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`; when
    generation has to stop early (token budget, context, time limit, cancellation) the text ends
    where it stopped, so the parser reports it as an invalid call. `stats` gets the output tokens
    (forced and sampled), the text and why it ended.
    """
    functions = {t["function"]["name"]: t["function"] for t in tools}
    text = f'{TOOL_CALL_OPEN}\n{{"name": '
    stats.finish_reason = "stop"
    decoder = None
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        decoder = ForcedDecoder(model, tokenizer, prompt_ids, params, max_total=max_total, stats=stats,
                                should_stop=should_stop)
        decoder.force(text)
        if name is None:
            name = json.loads(decoder.enum(ValueSpec("enum", tuple(json.dumps(n) for n in functions))))
        else:
            decoder.force(json.dumps(name))
        text += json.dumps(name)
        decoder.force(', "arguments": ')
        text += ', "arguments": '
        spec = simple_arguments(functions[name].get("parameters"))
        if spec is None:
            text += decoder.free_json()
            if stats.finish_reason != "stop":
                raise _Stop
        else:
            decoder.force("{")
            text += "{"
            for i, (key, value_spec) in enumerate(spec):
                head = f'{", " if i else ""}{json.dumps(key, ensure_ascii=False)}: '
                decoder.force(head)
                text += head
                if value_spec.kind == "string":
                    strings_left = sum(1 for _, s in spec[i:] if s.kind == "string")
                    share = max(1, (params.max_new_tokens - decoder.sampled) // strings_left)
                    text += decoder.string(value_spec, share)
                elif value_spec.kind == "enum":
                    text += decoder.enum(value_spec)
                else:
                    text += decoder.number(value_spec)
                if stats.finish_reason != "stop":
                    raise _Stop
            text += "}"
        text += f"}}\n{TOOL_CALL_CLOSE}"
    except _Stop:
        pass
    finally:
        if was_training:
            model.train()
        if decoder is not None:
            stats.output_tokens = len(decoder.ids) - decoder.prompt_len
            stats.token_ids = decoder.ids[decoder.prompt_len:]
            stats.seconds = time.perf_counter() - decoder.start
        stats.text = text
    return text
