"""Tool calling through the server: OpenAI `tools` / `tool_choice` in, `tool_calls` out, history round trip."""

from __future__ import annotations

import json

import openai
import pytest
from live_server import MODEL, serve_fixture  # noqa: F401  (the `serve` fixture)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city", "days"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris for 2 days?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def test_a_named_tool_choice_returns_a_valid_tool_call_that_is_logged(serve):
    server = serve()
    reply = client(server).chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=NAMED,
                                                   temperature=0, max_tokens=40, user="tools-1")
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    arguments = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and set(arguments) == {"city", "days"}
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)
    rows = server.memory.get(reply.model_extra["hullft"]["logged_ids"])
    assert [r["kind"] for r in rows][-1] == "tool" and "get_weather" in rows[-1]["text"]


def test_tool_calls_stream_in_the_last_delta_and_the_history_round_trips(serve):
    server = serve()
    chunks = list(client(server).chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=40,
        stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) >= 1 and calls[0].function.name == "get_weather" and calls[0].id
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": calls[0].id, "type": "function", "function": {
            "name": "get_weather", "arguments": calls[0].function.arguments}}]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 21 C"},
    ]
    reply = client(server).chat.completions.create(model=MODEL, messages=history, tools=[WEATHER],
                                                   tool_choice="none", temperature=0, max_tokens=6)
    assert reply.choices[0].finish_reason in ("stop", "length") and not reply.choices[0].message.tool_calls


def test_bad_tools_and_tool_call_history_are_400(serve):
    server = serve()
    c = client(server)
    with pytest.raises(openai.BadRequestError, match="tool"):
        c.chat.completions.create(model=MODEL, messages=ASK, tools=[{"type": "function", "function": {}}])
    with pytest.raises(openai.BadRequestError, match="nope"):
        c.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER],
                                  tool_choice={"type": "function", "function": {"name": "nope"}})
    bad_history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris"}}]}]
    with pytest.raises(openai.BadRequestError, match="not valid JSON"):
        c.chat.completions.create(model=MODEL, messages=bad_history)
