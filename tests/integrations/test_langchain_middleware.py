"""HullFTMiddleware in real `create_agent` loops on the tiny model: one adaptation per model call,
every step logged under the run's episode, per_task adapters keyed by thread, clear wiring errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from langchain.agents import create_agent
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langchain_hullft import ChatHullFT, HullFTMiddleware, get_adaptation_report
from langgraph.checkpoint.memory import InMemorySaver
from test_langchain_helpers import TOKENIZER, adapter_config, make_chat, make_memory

from hullft_agent.runtime import Runtime


class ScriptedToolChat(ChatHullFT):
    """A ChatHullFT whose first answer of a run is a tool call (the tiny model cannot produce one).

    Everything else (adaptation, generation, reports) is the real ChatHullFT; only the message of
    the first model call of each user turn is replaced by a `lookup` tool call.
    """

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> Any:
        return self.bind(**kwargs)

    @staticmethod
    def _script(messages, result):
        message = result.generations[0].message
        if not isinstance(messages[-1], ToolMessage):
            message = message.model_copy(update={
                "content": "",
                "tool_calls": [{"name": "lookup", "args": {"item": "potato"}, "id": "call-1", "type": "tool_call"}],
            })
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        return self._script(messages, super()._generate(messages, stop, run_manager, **kwargs))

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        return self._script(messages, await super()._agenerate(messages, stop, run_manager, **kwargs))


@tool
def lookup(item: str) -> str:
    """Say where an item is."""
    return f"the {item} is in the fridge"


@pytest.fixture()
def memory(tmp_path):
    return make_memory(tmp_path / "memory")


def count_adaptations(chat, monkeypatch) -> list[Any]:
    calls: list[Any] = []
    original = chat.adapter.adapt

    def spy(context, **kwargs):
        report = original(context, **kwargs)
        calls.append(({key: kwargs[key] for key in ("task", "episode_id")}, report))
        return report

    monkeypatch.setattr(chat.adapter, "adapt", spy)
    return calls


def probe(chat) -> torch.Tensor:
    ids = TOKENIZER("open the fridge", return_tensors="pt").input_ids
    with torch.no_grad():
        return chat.adapter.model(ids).logits


def rows_of(memory, episode_id):
    rows = memory.table.search().where(f"episode_id = '{episode_id}'").limit(100).to_list()
    return sorted(rows, key=lambda r: r["step"])


def test_tool_loop_adapts_once_per_model_call_and_logs_every_step(memory, monkeypatch):
    chat = make_chat(memory, cls=ScriptedToolChat)
    base_logits = probe(chat)
    calls = count_adaptations(chat, monkeypatch)
    agent = create_agent(chat, tools=[lookup], middleware=[HullFTMiddleware(task="a")])
    state = agent.invoke({"messages": [HumanMessage("where is the potato?")]})
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    ai_messages = [m for m in state["messages"] if isinstance(m, AIMessage)]
    assert len(calls) == len(ai_messages) == 2, "exactly one adaptation per model call"
    assert all(get_adaptation_report(m).adapted for m in ai_messages)
    assert all(kwargs["task"] == "a" for kwargs, _ in calls)
    episodes = {kwargs["episode_id"] for kwargs, _ in calls}
    assert len(episodes) == 1 and next(iter(episodes)).startswith("run-")
    rows = rows_of(memory, next(iter(episodes)))
    assert [(r["kind"], r["text"]) for r in rows] == [
        ("observation", "where is the potato?"),
        ("tool", 'lookup({"item": "potato"})'),
        ("result", "the potato is in the fridge"),
        ("action", ai_messages[-1].content),
    ]
    assert {r["task"] for r in rows} == {"a"}
    assert torch.equal(base_logits, probe(chat)), "per_query: base model after the run"
    # a second run is a new episode
    agent.invoke({"messages": [HumanMessage("and the salt?")]})
    assert len({kwargs["episode_id"] for kwargs, _ in calls}) == 2


def test_thread_is_the_episode_and_per_task_keeps_the_threads_adapter(memory, monkeypatch):
    chat = make_chat(memory, config=adapter_config(same_task_only=False))
    base_logits = probe(chat)
    calls = count_adaptations(chat, monkeypatch)
    agent = create_agent(chat, tools=[], middleware=[HullFTMiddleware(mode="per_task")], checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "thread-1"}}
    for turn in ["open the fridge", "take the potato", "slice the potato"]:
        state = agent.invoke({"messages": [HumanMessage(turn)]}, config)
    assert len(calls) == 3
    assert all(kwargs == {"task": "thread-1", "episode_id": "thread-1"} for kwargs, _ in calls)
    assert all(report.mode == "per_task" for _, report in calls)
    assert not torch.equal(base_logits, probe(chat)), "per_task: the thread's adapter is kept"
    rows = rows_of(memory, "thread-1")
    assert [r["kind"] for r in rows] == ["observation", "action"] * 3
    assert [r["text"] for r in rows[::2]] == ["open the fridge", "take the potato", "slice the potato"]
    assert len(state["messages"]) == 6
    # the thread's own rows never train its own adapter
    assert all("thread-1" not in {r["episode_id"] for r in memory.get(rep.selected_ids)} for _, rep in calls)


@pytest.mark.asyncio
async def test_async_agent(memory, monkeypatch):
    chat = make_chat(memory, cls=ScriptedToolChat)
    calls = count_adaptations(chat, monkeypatch)
    agent = create_agent(chat, tools=[lookup], middleware=[HullFTMiddleware()])
    state = await agent.ainvoke({"messages": [HumanMessage("where is the potato?")]},
                                {"configurable": {"thread_id": "t-async"}, "metadata": {"hullft_task": "a"}})
    assert len(calls) == 2 and len(state["messages"]) == 4
    assert [r["kind"] for r in rows_of(memory, "t-async")] == ["observation", "tool", "result", "action"]
    assert {r["task"] for r in rows_of(memory, "t-async")} == {"a"}


def test_the_middleware_logs_each_answer_as_a_decision(memory):
    chat = make_chat(memory)
    agent = create_agent(chat, tools=[], middleware=[HullFTMiddleware(log_decisions=True)])
    agent.invoke({"messages": [HumanMessage("where is the potato?")]},
                 {"configurable": {"thread_id": "t-dec"}})
    decisions = [r for r in rows_of(memory, "t-dec") if r["kind"] == "decision"]
    assert decisions, "one decision row per model answer"
    meta = json.loads(decisions[0]["metadata"])
    assert meta["actor"] == "agent" and meta["answer"] and meta["prompt"][-1]["content"] == "where is the potato?"


def test_the_middleware_logs_the_prompt_the_model_answered(memory):
    chat = make_chat(memory, prompt_format="nosys-h0")
    agent = create_agent(chat, tools=[], system_prompt="You cook.", middleware=[HullFTMiddleware(log_decisions=True)])
    agent.invoke({"messages": [HumanMessage("where is the potato?")]}, {"configurable": {"thread_id": "t-fmt"}})
    decision = next(r for r in rows_of(memory, "t-fmt") if r["kind"] == "decision")
    assert json.loads(decision["metadata"])["prompt"] == [{"role": "user", "content": "where is the potato?"}]


def test_logging_can_be_turned_off_and_adapt_off(memory, monkeypatch):
    chat = make_chat(memory)
    calls = count_adaptations(chat, monkeypatch)
    before = memory.count()
    agent = create_agent(chat, tools=[], middleware=[HullFTMiddleware(log_steps=False, adapt=False)])
    state = agent.invoke({"messages": [HumanMessage("open the fridge")]})
    assert memory.count() == before and calls == []
    assert "adapt=False" in get_adaptation_report(state["messages"][-1]).skip_reason


def test_a_model_that_is_not_chathullft_fails_with_a_type_error():
    fake = GenericFakeChatModel(messages=iter([AIMessage("hi")]))
    agent = create_agent(fake, tools=[], middleware=[HullFTMiddleware()])
    with pytest.raises(TypeError, match="needs the agent's model to be a langchain_hullft.ChatHullFT.*GenericFakeChatModel"):
        agent.invoke({"messages": [HumanMessage("hello")]})


@pytest.mark.parametrize("kwargs, match", [({"mode": "sometimes"}, "mode"), ({"task": ""}, "task"),
                                           ({"memory": object()}, "TrajectoryMemory")])
def test_bad_middleware_settings(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        HullFTMiddleware(**kwargs)


def test_plain_chathullft_offers_the_agents_tools_to_the_model(memory, monkeypatch):
    chat = make_chat(memory, max_positions=2048)
    offered = []
    real = Runtime.generate

    def spy(self, call, *args, **kwargs):
        offered.append(call.active_tools)
        return real(self, call, *args, **kwargs)

    monkeypatch.setattr(Runtime, "generate", spy)
    agent = create_agent(chat, tools=[lookup], middleware=[HullFTMiddleware()])
    state = agent.invoke({"messages": [HumanMessage("where is the potato?")]})
    assert [t["function"]["name"] for t in offered[0]] == ["lookup"]
    assert offered[0][0]["function"]["parameters"]["required"] == ["item"]
    # the random tiny model writes no call on its own, so the run ends with its answer
    assert isinstance(state["messages"][-1], AIMessage) and not state["messages"][-1].tool_calls
