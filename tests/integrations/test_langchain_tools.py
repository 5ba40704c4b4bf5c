"""ChatHullFT tool calling: bind_tools, AIMessage.tool_calls, tool-message round trips, streaming, structured output."""

from __future__ import annotations

import json

import pytest
from conftest import build_tiny_model
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_hullft import ChatHullFT
from langchain_hullft._messages import to_conversation
from pydantic import BaseModel, Field
from test_langchain_helpers import TOKENIZER, make_memory

from hullft_agent.runtime import engine as engine_module
from hullft_agent.runtime.prompt import render_prompt


@tool
def get_weather(city: str, days: int) -> str:
    """Get the weather in a city for some days."""
    return f"sunny in {city} for {days} days"


@tool
def lookup(item: str) -> str:
    """Say where an item is."""
    return f"the {item} is in the fridge"


class Person(BaseModel):
    """A person."""

    name: str = Field(description="the name")
    age: int = Field(description="the age in years")


ASK = "What is the weather in Paris for 2 days?"
_MODEL = build_tiny_model(len(TOKENIZER), seed=1, max_positions=2048)


@pytest.fixture()
def chat():
    return ChatHullFT(llm=_MODEL, tokenizer=TOKENIZER, model="tiny-llama", seed=0, max_tokens=24, temperature=0.0)


def test_bind_tools_converts_tools_and_maps_tool_choice(chat):
    bound = chat.bind_tools([get_weather, Person])
    assert [t["function"]["name"] for t in bound.kwargs["tools"]] == ["get_weather", "Person"]
    assert bound.kwargs["tools"][0]["function"]["parameters"]["required"] == ["city", "days"]
    assert "tool_choice" not in bound.kwargs
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert chat.bind_tools([get_weather, lookup], tool_choice="any").kwargs["tool_choice"] == "required"
    assert chat.bind_tools([get_weather, lookup], tool_choice="get_weather").kwargs["tool_choice"] == named
    assert chat.bind_tools([get_weather], tool_choice=True).kwargs["tool_choice"] == named
    assert chat.bind_tools([get_weather], tool_choice="none").kwargs["tool_choice"] == "none"
    with pytest.raises(ValueError, match="'launch', which is not among the tools"):
        chat.bind_tools([get_weather], tool_choice="launch")
    with pytest.raises(ValueError, match="2 are bound"):
        chat.bind_tools([get_weather, lookup], tool_choice=True)
    with pytest.raises(ValueError, match="cannot be turned into a function tool"):
        chat.bind_tools([42])


def test_a_forced_call_is_an_aimessage_tool_call(chat):
    message = chat.bind_tools([get_weather, lookup], tool_choice="get_weather").invoke(ASK)
    assert message.content == "" and message.invalid_tool_calls == []
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and call["type"] == "tool_call" and call["id"].startswith("call_")
    assert set(call["args"]) == {"city", "days"} and isinstance(call["args"]["city"], str)
    assert isinstance(call["args"]["days"], int)
    assert message.response_metadata["finish_reason"] == "tool_calls"
    assert [b["type"] for b in message.content_blocks] == ["tool_call"]
    assert isinstance(get_weather.invoke(call), ToolMessage), "the call runs the tool as LangChain expects"
    required = chat.bind_tools([lookup], tool_choice="any").invoke(ASK)
    assert [c["name"] for c in required.tool_calls] == ["lookup"] and required.tool_calls[0]["args"]["item"]


def test_streaming_puts_the_calls_in_the_last_chunk(chat):
    bound = chat.bind_tools([get_weather], tool_choice="any")
    chunks = list(bound.stream(ASK))
    assert chunks[-1].chunk_position == "last" and chunks[-1].tool_call_chunks
    assert all(not c.content and not c.tool_call_chunks for c in chunks[:-1])
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    invoked = bound.invoke(ASK)
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [(c["name"], c["args"]) for c in invoked.tool_calls]
    assert json.loads(chunks[-1].tool_call_chunks[0]["args"]) == invoked.tool_calls[0]["args"]
    assert full.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.asyncio
async def test_async_forced_call(chat):
    message = await chat.bind_tools([lookup], tool_choice="lookup").ainvoke(ASK)
    assert [c["name"] for c in message.tool_calls] == ["lookup"]


def test_auto_answers_with_content_calls_and_reported_bad_calls(chat, monkeypatch):
    answer = ('I will look.\n<tool_call>\n{"name": "lookup", "arguments": {"item": "salt"}}\n</tool_call>\n'
              '<tool_call>{"name": "fly", "arguments": {}}</tool_call><tool_call>{"name": </tool_call>')

    def scripted(model, tokenizer, ids, params, *, max_total, stats, should_stop=None):
        yield answer
        stats.text, stats.output_tokens, stats.finish_reason = answer, 30, "stop"

    monkeypatch.setattr(engine_module, "sample_tokens", scripted)
    bound = chat.bind_tools([lookup])
    message = bound.invoke("where is the salt?")
    assert message.content == "I will look."
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("lookup", {"item": "salt"})]
    bad = message.invalid_tool_calls
    assert [c["name"] for c in bad] == ["fly", None] and "unknown tool 'fly'" in bad[0]["error"]
    assert "not valid JSON" in bad[1]["error"] and bad[1]["type"] == "invalid_tool_call"
    assert len(message.response_metadata["hullft"]["invalid_tool_calls"]) == 2
    chunks = list(bound.stream("where is the salt?"))
    assert [c.content for c in chunks] == ["I will look.", ""], "the content once, then the last chunk"
    full = chunks[0] + chunks[1]
    assert [c["name"] for c in full.tool_calls] == ["lookup"]
    errors = [c["error"] for c in full.response_metadata["hullft"]["invalid_tool_calls"]]
    assert len(errors) == 2 and "unknown tool 'fly'" in errors[0], "a stream reports its bad calls in the metadata"


def test_tool_messages_round_trip_as_structured_history(tmp_path):
    memory = make_memory(tmp_path / "memory")
    chat = ChatHullFT(llm=_MODEL, tokenizer=TOKENIZER, memory=memory, seed=0, max_tokens=8, temperature=0.0)
    messages = [
        SystemMessage("You are a cook."),
        HumanMessage("where is the potato?"),
        AIMessage("", tool_calls=[{"name": "lookup", "args": {"item": "potato"}, "id": "c1"}]),
        ToolMessage("the potato is in the fridge", tool_call_id="c1", name="lookup"),
        ToolMessage("no such tool", tool_call_id="c2", name="fly", status="error"),
    ]
    conversation = to_conversation(messages)
    assert conversation[2] == {"role": "assistant", "content": "",
                               "tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"item": "potato"}}]}
    assert conversation[3] == {"role": "tool", "content": "the potato is in the fridge", "tool_call_id": "c1",
                               "name": "lookup"}
    assert conversation[4]["content"] == "Error: no such tool"
    prompt = render_prompt(TOKENIZER, conversation, [{"name": "lookup"}])
    assert '<tool_call>\n{"name": "lookup", "arguments": {"item": "potato"}}\n</tool_call>' in prompt
    assert "<tool_response>\nthe potato is in the fridge\n</tool_response>" in prompt
    reply = chat.bind_tools([lookup]).invoke(messages, episode_id="ep-tools")
    assert isinstance(reply, AIMessage)
    rows = sorted(memory.get(reply.response_metadata["hullft"]["logged_ids"]), key=lambda r: r["step"])
    assert [r["metadata"].get("tool_call_id") for r in rows[:2]] == ["c1", "c2"]
    called = chat.bind_tools([lookup], tool_choice="lookup").invoke(messages, episode_id="ep-tools")
    logged = memory.get(called.response_metadata["hullft"]["logged_ids"])
    assert any(r["kind"] == "tool" and r["metadata"]["tool_call_id"] == called.tool_calls[0]["id"] for r in logged)


def test_with_structured_output_uses_a_forced_call(chat):
    person = chat.with_structured_output(Person).invoke("Ada is 36.")
    assert isinstance(person, Person) and person.name and isinstance(person.age, int)
