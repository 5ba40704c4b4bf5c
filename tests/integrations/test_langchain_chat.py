"""ChatHullFT on the tiny model: adaptation per call, streaming, memory logging, concurrency, bad input."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from conftest import build_tiny_model
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_hullft import ChatHullFT, ContextOverflowError, UnsupportedMessageError, get_adaptation_report
from test_langchain_helpers import TOKENIZER, adapter_config, make_chat, make_memory

from hullft_agent.config import FinetuneConfig, LearnFrom, LoRAConfig
from hullft_agent.runtime.generation import StopStringFilter
from hullft_agent.runtime.prompt import fallback_conversations

QUESTION = "take the potato from the fridge"


@pytest.fixture()
def memory(tmp_path):
    return make_memory(tmp_path / "memory")


@pytest.fixture()
def chat(memory):
    return make_chat(memory)


def probe(chat) -> torch.Tensor:
    ids = TOKENIZER("open the fridge", return_tensors="pt").input_ids
    with torch.no_grad():
        return chat.adapter.model(ids).logits


class TokenCounter(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


# ---------------------------------------------------------------------------------------------- basics
def test_invoke_adapts_and_reports(chat, memory):
    message = chat.invoke(QUESTION, task="a")
    assert isinstance(message, AIMessage) and message.content
    meta = message.response_metadata
    assert meta["model_name"] == "tiny-llama" and meta["finish_reason"] in {"stop", "length"}
    report = get_adaptation_report(message)
    assert report is not None and report.adapted and report.method == "hullft"
    assert sum(report.counts) == 4 and len(report.selected_ids) == len(report.weights) == len(report.counts)
    assert {row["task"] for row in memory.get(report.selected_ids)} == {"a"}  # same_task_only
    assert {"embed", "retrieve", "select", "finetune", "total"} <= set(report.timings)
    assert {"prompt", "adapt", "generate", "log"} <= set(meta["hullft"]["timings"])
    usage = message.usage_metadata
    assert usage["input_tokens"] == meta["hullft"]["prompt_tokens"] > 0
    assert 0 < usage["output_tokens"] <= 16 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_adaptation_changes_the_answer_and_per_query_restores_base(chat):
    base_logits = probe(chat)
    base = chat.invoke(QUESTION, adapt=False)
    assert get_adaptation_report(base).skip_reason.startswith("adaptation turned off")
    adapted = chat.invoke(QUESTION, task="a")
    assert adapted.content != base.content, "the adaptation should change this answer"
    assert torch.equal(base_logits, probe(chat)), "per_query: the base model is back after the call"
    assert chat.invoke(QUESTION, adapt=False).content == base.content


def test_stream_yields_the_invoke_text_and_fires_a_callback_per_token(chat):
    expected = chat.invoke(QUESTION, task="a", log=False)
    counter = TokenCounter()
    chunks = list(chat.stream(QUESTION, config={"callbacks": [counter]}, task="a", log=False))
    text = "".join(c.content for c in chunks)
    assert text == expected.content
    assert len(chunks) > 3 and chunks[-1].chunk_position == "last"
    assert [t for t in counter.tokens if t] == [c.content for c in chunks if c.content]
    last = chunks[-1]
    assert last.usage_metadata == expected.usage_metadata
    assert last.response_metadata["adaptation"]["selected_ids"] == expected.response_metadata["adaptation"]["selected_ids"]
    assert sum(1 for c in chunks if c.response_metadata.get("adaptation")) == 1


def test_invoke_with_streaming_true_matches(memory):
    plain = make_chat(memory).invoke(QUESTION, task="a", log=False)
    streaming = make_chat(memory, streaming=True).invoke(QUESTION, task="a", log=False)
    assert streaming.content == plain.content


@pytest.mark.asyncio
async def test_async_calls_match_and_do_not_block_the_event_loop(chat, monkeypatch):
    expected = chat.invoke(QUESTION, task="a", log=False).content
    original = chat.adapter.adapt

    def slow_adapt(*args, **kwargs):
        time.sleep(0.3)  # a blocking adaptation, as on a real model
        return original(*args, **kwargs)

    monkeypatch.setattr(chat.adapter, "adapt", slow_adapt)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    try:
        result = await chat.ainvoke(QUESTION, task="a", log=False)
        ticks_during_invoke = ticks
        streamed = "".join([c.content async for c in chat.astream(QUESTION, task="a", log=False)])
    finally:
        tick_task.cancel()
    assert result.content == expected and streamed == expected
    assert ticks_during_invoke >= 5, "the event loop must keep running while the model works"


def test_seed_is_reported_and_reproduces(memory):
    chat = make_chat(memory, seed=None)
    first = chat.invoke(QUESTION, task="a", log=False)
    seed = first.response_metadata["hullft"]["seed"]
    again = chat.invoke(QUESTION, task="a", log=False, seed=seed)
    assert again.content == first.content


def test_stop_sequences_cut_the_answer(chat):
    full = chat.invoke(QUESTION, adapt=False, log=False, max_tokens=24).content
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop and stop in full
    cut = chat.invoke(QUESTION, adapt=False, log=False, max_tokens=24, stop=[stop])
    assert cut.content == full[: full.index(stop)]
    assert cut.response_metadata["finish_reason"] == "stop"
    streamed = "".join(c.content for c in chat.stream(QUESTION, adapt=False, log=False, max_tokens=24, stop=[stop]))
    assert streamed == cut.content


def test_stop_filter_holds_back_partial_matches():
    filt = StopStringFilter(["END"])
    assert filt.push("abc E") == "abc "
    assert filt.push("abc EN") == ""
    assert filt.push("abc ENx") == "ENx"
    assert filt.push("abc ENx END tail") == " "
    assert filt.stopped and filt.flush("abc ENx END tail") == ""


def test_max_tokens_and_greedy(chat):
    message = chat.invoke(QUESTION, adapt=False, log=False, max_tokens=3, temperature=0)
    assert message.usage_metadata["output_tokens"] <= 3
    assert chat.invoke(QUESTION, adapt=False, log=False, max_tokens=3, temperature=0, seed=99).content == message.content


def test_no_adapter_answers_and_says_why(memory):
    chat = make_chat(memory, adapter=False)
    message = chat.invoke(QUESTION)
    assert message.content
    report = get_adaptation_report(message)
    assert report.skipped and report.skip_reason.startswith("no adapter")


def test_tool_and_chat_messages_are_rendered_and_logged(chat, memory):
    messages = [
        SystemMessage("you are a cook"),
        HumanMessage("what is in the fridge?"),
        AIMessage("", tool_calls=[{"name": "look", "args": {"where": "fridge"}, "id": "c1"}]),
        ToolMessage("a yellow potato", tool_call_id="c1", name="look"),
        ChatMessage(role="user", content="take it"),
    ]
    message = chat.invoke(messages, episode_id="ep-tools", task="a")
    assert message.content
    rows = sorted(memory.get(message.response_metadata["hullft"]["logged_ids"]), key=lambda r: r["step"])
    assert [r["kind"] for r in rows] == ["result", "observation", "action"]
    assert rows[0]["text"] == "a yellow potato" and rows[0]["metadata"]["tool_call_id"] == "c1"


# ---------------------------------------------------------------------------------------------- memory keys
def test_logging_uses_config_keys(chat, memory):
    config = {"configurable": {"thread_id": "thread-7"}, "metadata": {"hullft_task": "a", "hullft_namespace": "team"}}
    message = chat.invoke([HumanMessage("open the fridge please")], config=config)
    meta = message.response_metadata["hullft"]
    assert (meta["episode_id"], meta["task"], meta["namespace"]) == ("thread-7", "a", "team")
    assert memory.count(namespace="team", episode_id="thread-7", task="a") == 2
    rows = memory.get(meta["logged_ids"], namespace="team")
    assert [r["kind"] for r in rows] == ["observation", "action"]
    assert rows[0]["text"] == "open the fridge please" and rows[1]["text"] == message.content
    # the namespace also scopes retrieval: 'team' holds only this exchange, excluded as the current episode
    again = chat.invoke([HumanMessage("open the fridge please")], config=config)
    assert get_adaptation_report(again).pool_size == 0


def test_logging_defaults_and_kwargs(chat, memory):
    message = chat.invoke(QUESTION)
    meta = message.response_metadata["hullft"]
    assert meta["namespace"] == "default" and meta["task"] is None and meta["episode_id"].startswith("chat-")
    assert memory.count(episode_id=meta["episode_id"]) == 2
    other = chat.invoke(QUESTION, task="b", episode_id="ep-9", config={"metadata": {"task": "a"}})
    assert other.response_metadata["hullft"]["task"] == "b"  # a call's kwargs win over the config
    assert memory.count(task="b", episode_id="ep-9") == 2
    assert chat.invoke(QUESTION, log=False).response_metadata["hullft"]["logged_ids"] == []


def test_current_episode_is_not_trained_on(chat, memory):
    message = chat.invoke(QUESTION, episode_id="a-1", task="a")
    report = get_adaptation_report(message)
    assert report.adapted and not {r["episode_id"] for r in memory.get(report.selected_ids)} & {"a-1"}


# ---------------------------------------------------------------------------------------------- settings
def test_configurable_adaptation_fields(chat):
    configurable = chat.configurable_adaptation()
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | configurable
    message = chain.invoke({"q": QUESTION}, config={"configurable": {"n_select": 2, "method": "knn"}, "metadata": {"task": "a"}})
    report = get_adaptation_report(message)
    assert report.method == "knn" and report.n == 2 and sum(report.counts) == 2
    default = (chain | StrOutputParser()).invoke({"q": QUESTION})
    assert isinstance(default, str)
    assert chat.adapter.config.selection.n == 4 and chat.adapter.config.selection.method == "hullft"


def test_call_kwargs_override_adaptation_settings(chat):
    report = get_adaptation_report(chat.invoke(QUESTION, task="a", n_select=3, k=2, lr=0.01, refresh_interval=1))
    assert report.n == 3 and report.k == 2 and report.pool_size == 2 and sum(report.counts) == 3
    assert report.passes == report.steps == 3  # r = 1: a fresh gradient on every step
    assert chat.adapter.config.selection.n == 4 and chat.adapter.config.finetune.lr == 0.05


def test_decisions_are_logged_and_later_calls_learn_only_from_won_episodes(memory):
    chat = make_chat(memory, log_decisions=True)
    first = chat.invoke([SystemMessage("cook"), HumanMessage(QUESTION)], task="a", episode_id="run-1",
                        actor="expert", reward=1.0)
    rows = [r for r in memory.get(first.response_metadata["hullft"]["logged_ids"]) if r["kind"] == "decision"]
    assert len(rows) == 1
    decision = rows[0]
    assert decision["metadata"]["answer"] == first.content and decision["metadata"]["actor"] == "expert"
    assert decision["metadata"]["prompt"] == [{"role": "system", "content": "cook"}, {"role": "user", "content": QUESTION}]
    assert decision["text"] == QUESTION and decision["reward"] == 1.0, "the state: recent messages, no system prompt"
    memory.finish_episode("run-1", outcome="won")
    wins = LearnFrom(kinds=["decision"], outcomes=["won"])
    finetune = FinetuneConfig(lr=0.05, max_length=128, lora=LoRAConfig(r=4, alpha=8))
    learner = make_chat(memory, config=adapter_config(learn_from=wins, finetune=finetune))
    report = get_adaptation_report(learner.invoke(QUESTION, task="a", log=False))
    assert report.selected_ids == [decision["id"]] and report.decisions == 1 and report.steps == 4
    assert not report.excluded


def test_a_call_chooses_the_rows_it_learns_from_and_bounds_its_training(memory):
    chat = make_chat(memory, log_decisions=True, max_tokens=4)
    first = chat.invoke(QUESTION, task="a", episode_id="run-1")
    decision = next(r for r in memory.get(first.response_metadata["hullft"]["logged_ids"]) if r["kind"] == "decision")
    memory.finish_episode("run-1", outcome="won")
    wins = LearnFrom(kinds=["decision"], outcomes=["won"])
    learned = get_adaptation_report(chat.invoke(QUESTION, task="a", log=False, learn_from=wins))
    assert learned.selected_ids == [decision["id"]] and learned.decisions == 1
    bounded = get_adaptation_report(chat.invoke(QUESTION, log=False, max_instances=1))
    assert bounded.steps == 1 and bounded.deferred == sum(bounded.counts) - 1 > 0
    configured = chat.configurable_adaptation().invoke(QUESTION, config={"configurable": {"max_instances": 2}}, log=False)
    assert get_adaptation_report(configured).steps == 2


def test_a_prompt_format_answers_and_logs_the_trimmed_messages(memory):
    whole = [SystemMessage("cook"), HumanMessage("a kitchen"), AIMessage("look"), HumanMessage(QUESTION)]
    trimmed = [HumanMessage(QUESTION)]  # nosys-h0: no system prompt, no earlier messages
    chat = make_chat(memory, log_decisions=True, prompt_format="nosys-h0")
    answered = chat.invoke(whole, adapt=False, episode_id="run-f")
    plain = make_chat(memory).invoke(trimmed, adapt=False, log=False)  # same weights and seed
    assert answered.content == plain.content and answered.usage_metadata == plain.usage_metadata
    rows = [r for r in memory.get(answered.response_metadata["hullft"]["logged_ids"]) if r["kind"] == "decision"]
    assert rows[0]["metadata"]["prompt"] == [{"role": "user", "content": QUESTION}]
    with pytest.raises(ValueError, match="unknown decision format"):
        make_chat(memory, prompt_format="shortest")


def test_per_task_mode_keeps_each_tasks_adapter(memory):
    chat = make_chat(memory, config=adapter_config(mode="per_task"))
    base_logits = probe(chat)
    first = chat.invoke(QUESTION, task="a", log=False)
    second = chat.invoke(QUESTION, task="a", log=False)
    assert first.content != second.content, "per_task keeps training the task's adapter"
    assert not torch.equal(base_logits, probe(chat))
    # a per_query call in between starts from the base model and leaves task a's adapter intact
    chat.invoke(QUESTION, task="b", mode="per_query", log=False)
    assert torch.equal(base_logits, probe(chat))
    chat.adapter.reset()
    assert torch.equal(base_logits, probe(chat))


# ---------------------------------------------------------------------------------------------- concurrency
def test_concurrent_calls_get_exactly_their_solo_answers(chat):
    solo_a = chat.invoke(QUESTION, task="a", log=False).content
    solo_b = chat.invoke(QUESTION, task="b", log=False).content
    assert solo_a != solo_b, "the two tasks adapt to different memories"
    start = threading.Barrier(2)

    def call(task):
        start.wait()
        return chat.invoke(QUESTION, task=task, log=False).content

    for _ in range(2):
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(call, ["a", "b"]))
        assert answers == [solo_a, solo_b]
    batch = chat.batch([QUESTION] * 4, config=[{"metadata": {"task": t}} for t in "abab"], log=False)
    assert [m.content for m in batch] == [solo_a, solo_b, solo_a, solo_b]


@pytest.mark.asyncio
async def test_abatch_and_concurrent_streams_are_serialised(chat):
    solo_a = chat.invoke(QUESTION, task="a", log=False).content
    solo_b = chat.invoke(QUESTION, task="b", log=False).content
    batch = await chat.abatch([QUESTION, QUESTION], config=[{"metadata": {"task": "a"}}, {"metadata": {"task": "b"}}],
                              log=False)
    assert [m.content for m in batch] == [solo_a, solo_b]

    async def streamed(task):
        return "".join([c.content async for c in chat.astream(QUESTION, task=task, log=False)])

    assert list(await asyncio.gather(streamed("a"), streamed("b"))) == [solo_a, solo_b]


def test_abandoned_stream_frees_the_model(chat):
    stream = chat.stream(QUESTION, task="a", log=False, max_tokens=40)
    next(stream)
    stream.close()
    done = threading.Event()
    threading.Thread(target=lambda: (chat.invoke(QUESTION, adapt=False, log=False), done.set()), daemon=True).start()
    assert done.wait(10), "a closed stream must release the model lock"


# ---------------------------------------------------------------------------------------------- failures
def test_non_finite_loss_answers_with_base_and_says_why(chat):
    base = chat.invoke(QUESTION, adapt=False, log=False).content
    norm = chat.adapter.model.get_base_model().model.norm
    handle = norm.register_forward_hook(lambda m, i, o: o * float("nan") if torch.is_grad_enabled() else o)
    try:
        message = chat.invoke(QUESTION, task="a", log=False)
    finally:
        handle.remove()
    report = get_adaptation_report(message)
    assert report.skipped and "non-finite" in report.skip_reason
    assert message.content == base


def test_empty_memory_answers_with_base(tmp_path):
    chat = make_chat(make_memory(tmp_path / "empty", episodes={}))
    base = chat.invoke(QUESTION, adapt=False, log=False).content
    message = chat.invoke(QUESTION, log=False)
    report = get_adaptation_report(message)
    assert report.skipped and "no candidates" in report.skip_reason and message.content == base


def test_adaptation_exception_falls_back_or_raises(chat, monkeypatch):
    base = chat.invoke(QUESTION, adapt=False, log=False).content

    def broken(*args, **kwargs):
        raise RuntimeError("embedder offline")

    monkeypatch.setattr(chat.adapter, "adapt", broken)
    message = chat.invoke(QUESTION, log=False)
    assert message.content == base
    assert "adaptation failed: RuntimeError: embedder offline" in get_adaptation_report(message).skip_reason
    strict = chat.model_copy(update={"on_adapt_error": "raise"})
    with pytest.raises(RuntimeError, match="embedder offline"):
        strict.invoke(QUESTION, log=False)


class _Custom(BaseMessage):
    type: str = "custom"


@pytest.mark.parametrize(
    "messages, error, match",
    [
        ([], ValueError, "at least one message"),
        ([_Custom(content="hi")], UnsupportedMessageError, "unsupported message type _Custom"),
        ([RemoveMessage(id="x")], UnsupportedMessageError, "RemoveMessage"),
        ([ChatMessage(role="wizard", content="hi")], UnsupportedMessageError, "role 'wizard'"),
        ([HumanMessage([{"type": "image", "url": "http://x/y.png"}])], UnsupportedMessageError, "text-only"),
    ],
)
def test_bad_messages_raise_clear_errors(chat, messages, error, match):
    with pytest.raises(error, match=match):
        chat.invoke(messages)


def test_bad_call_options_raise(chat):
    with pytest.raises(TypeError, match="max_token"):
        chat.invoke(QUESTION, max_token=5)
    with pytest.raises(TypeError, match="n_select"):
        chat.invoke(QUESTION, n_select=0)
    with pytest.raises(ValueError, match="cannot be switched"):
        chat.invoke(QUESTION, model="gpt-5")
    with pytest.raises(ValueError, match="not among the tools"):
        chat.bind_tools([{"name": "look", "parameters": {"type": "object", "properties": {}}}], tool_choice="jump")


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="llm="):
        ChatHullFT(tokenizer=TOKENIZER)
    with pytest.raises(ValueError, match="tokenizer"):
        ChatHullFT(llm=build_tiny_model(len(TOKENIZER)))
    with pytest.raises(ValueError, match="max_tokens"):
        make_chat(None, adapter=False, max_tokens=0)
    with pytest.raises(ValueError, match="extra"):
        make_chat(None, adapter=False, max_token=5)


def test_long_prompts_drop_the_oldest_messages(memory):
    chat = make_chat(memory, max_positions=64, max_tokens=8)
    history: list[BaseMessage] = [SystemMessage("cook")]
    for i in range(12):
        history += [HumanMessage(f"step {i}: open the fridge"), AIMessage("the fridge is open")]
    history.append(HumanMessage("take the potato"))
    message = chat.invoke(history, log=False)
    meta = message.response_metadata["hullft"]
    assert meta["dropped_messages"] > 0 and meta["prompt_tokens"] <= 64 - 8
    assert message.usage_metadata["total_tokens"] <= 64
    strict = chat.model_copy(update={"context_overflow": "error"})
    with pytest.raises(ContextOverflowError, match="context of 64 tokens"):
        strict.invoke(history)
    with pytest.raises(ContextOverflowError, match="shorten the last message"):
        chat.invoke("potato " * 200)


def test_chat_template_fallbacks():
    conv = [{"role": "system", "content": "s"}, {"role": "tool", "content": "t"}, {"role": "user", "content": "u"}]
    variants = fallback_conversations(conv)
    assert variants[1][1]["role"] == "user"
    assert variants[-1] == [{"role": "user", "content": "s\n\nt\n\nu"}]
