"""A LangGraph agent that saves memories in `LanceDBStore`, then a ChatHullFT that learns from them.

Runs offline on the packaged SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (about half a minute on a
2-core CPU; the first run also converts the packaged GGUF model once, about 20 s):

    .venv/bin/python examples/langgraph_store.py [--threads 1]

1. `create_agent` with `store=LanceDBStore(...)` and two LangMem-style tools written here:
   `save_memory` (one item per fact, under ("memories", <user>)) and `search_memory` (semantic search
   over that namespace). SmolLM2-135M cannot call tools, so a scripted stand-in for a tool-calling LLM
   (langchain_core's GenericFakeChatModel) decides the tool calls; the tools, the agent loop and the
   store are the real ones.
2. `ChatHullFT` adapts on what the store holds: its candidate source is the user's store items
   merged with the trajectory memory's rows, and the adaptation report names the items it selected.
   Another user's items live in the same table and are never candidates.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from typing import Any

import torch
from langchain.agents import create_agent
from langchain.tools import ToolRuntime, tool
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_hullft import ChatHullFT, LanceDBStore, get_adaptation_report

from hullft_agent import AdapterConfig, Embedder, FinetuneConfig, SelectionConfig
from hullft_agent.memory import TrajectoryMemory

USER = "user-1"


@tool
def save_memory(content: str, runtime: ToolRuntime) -> str:
    """Save one fact about the user to long-term memory."""
    user = runtime.config["configurable"]["user_id"]
    key = f"fact-{len(runtime.store.search(('memories', user), limit=1000))}"
    runtime.store.put(("memories", user), key, {"text": content})
    return f"saved as {key}"


@tool
def search_memory(query: str, runtime: ToolRuntime) -> str:
    """Search the user's long-term memories."""
    user = runtime.config["configurable"]["user_id"]
    found = runtime.store.search(("memories", user), query=query, limit=3)
    return "\n".join(f"{item.key}: {item.value['text']} (score {item.score:.2f})" for item in found)


class ScriptedToolCaller(GenericFakeChatModel):
    """Answers from a script of AIMessages (tool calls included); `bind_tools` accepts the agent's tools."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedToolCaller:
        return self


def call(name: str, **args: Any) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"call-{name}-{abs(hash(str(args)))}"}])


CONVERSATION = [  # (what the user says, what the scripted model does: its tool calls, then its reply)
    ("I'm vegetarian and I love really spicy food.",
     [call("save_memory", content="The user is vegetarian and loves very spicy food, like chili tofu."),
      AIMessage("Noted: vegetarian, spicy.")]),
    ("My kitchen only has a wok and a rice cooker.",
     [call("save_memory", content="The user cooks with a wok and a rice cooker only, no oven."),
      AIMessage("Got it: wok and rice cooker.")]),
    ("What do you remember about my cooking?",
     [call("search_memory", query="how does the user cook and what do they eat"),
      AIMessage("You are vegetarian, love spicy food, and cook with a wok and a rice cooker.")]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description="LanceDBStore memories that a ChatHullFT learns from")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest for this small model on a busy 2-core CPU)")
    torch.set_num_threads(parser.parse_args().threads)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hullft-store-") as tmp:
        print("loading the embedder (all-MiniLM-L6-v2) ...")
        embedder = Embedder()
        memory = TrajectoryMemory.open(tmp, embedder=embedder, namespace="assistant")
        store = LanceDBStore.from_memory(memory, index={"embed": embedder, "fields": ["text"]})
        store.put(("memories", "user-2"), "fact-0", {"text": "The user eats steak every day and hates chili."})

        agent = create_agent(ScriptedToolCaller(messages=iter(m for _, ms in CONVERSATION for m in ms)),
                             tools=[save_memory, search_memory], store=store)
        config = {"configurable": {"user_id": USER}}
        messages: list = []
        print(f"\n1. the agent ({USER}), store {store}")
        for said, _ in CONVERSATION:
            messages = agent.invoke({"messages": [*messages, HumanMessage(said)]}, config)["messages"]
            tools = [m for m in messages if m.type == "tool"]
            print(f"  user: {said}\n  tool {tools[-1].name}: {tools[-1].content.splitlines()[0]}\n"
                  f"  agent: {messages[-1].content}")
        for item in store.search(("memories",), limit=10):
            print(f"  stored {'/'.join(item.namespace)}/{item.key}: {item.value['text']}")

        print("\n2. ChatHullFT adapting on the store (loading smollm2-135m-instruct) ...")
        source = store.as_candidate_source(("memories", USER), memory=memory)
        chat = ChatHullFT.from_pretrained(
            memory=memory, source=source, max_tokens=32, temperature=0.0, repetition_penalty=1.3,
            adapter_config=AdapterConfig(selection=SelectionConfig(method="hullft", n=6, k=20),
                                         finetune=FinetuneConfig(lr=3e-3, max_length=64)),
        )
        question = [HumanMessage("Suggest one dinner for me tonight, in one sentence.")]
        base = chat.invoke(question, adapt=False, log=False)
        print(f"  base answer:    {base.content.strip()!r}")
        t0 = time.perf_counter()
        answer = chat.invoke(question, config={"configurable": {"thread_id": "dinner"}})
        report = get_adaptation_report(answer)
        timings = answer.response_metadata["hullft"]["timings"]
        print(f"  adapted answer: {answer.content.strip()!r}   ({time.perf_counter() - t0:.1f} s: adapt "
              f"{timings['adapt']:.1f} s, generate {timings['generate']:.1f} s)")
        print(f"  adaptation timings: { {k: round(v, 2) for k, v in report.timings.items()} }")
        print(f"  adaptation: {report.steps} LoRA steps on {len(report.selected_ids)} of {report.pool_size} "
              f"candidates; selected store items:")
        for cid, count, weight, item in zip(report.selected_ids, report.counts, report.weights,
                                            source.items(report.selected_ids), strict=True):
            name = f"{'/'.join(item.namespace)}/{item.key}: {item.value['text']}" if item else f"memory row {cid}"
            print(f"    x{count} (weight {weight:.2f}) {name}")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
