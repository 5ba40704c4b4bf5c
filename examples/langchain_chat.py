"""A LangChain chat model that adapts to a memory of past episodes before it answers.

Runs offline on the packaged SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (about a minute on a
2-core CPU):

    .venv/bin/python examples/langchain_chat.py

What it shows:
1. A trajectory memory (LanceDB, in a temp dir) holding a few past support conversations about a
   made-up product, the "Aurora X2" lamp, which the base model cannot know about.
2. The same question answered by the base model (adapt=False) and by `ChatHullFT`, which selects
   memory rows for the conversation (HullFT), runs a few LoRA steps on them and then answers.
3. Which memory rows were chosen (ids, counts, weights), where the time went, and that the exchange
   itself was logged back to memory (so the next call can learn from it).
4. A streamed follow-up in the same thread (tokens printed as they arrive).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_hullft import ChatHullFT, get_adaptation_report

from hullft_agent import AdapterConfig, Embedder, FinetuneConfig, SelectionConfig
from hullft_agent.memory import TrajectoryMemory

PAST_EPISODES = {
    "support-1": [
        ("observation", "My Aurora X2 lamp is stuck on red. How do I reset it?"),
        ("action", "To reset the Aurora X2, hold the dimmer button for 10 seconds until the lamp blinks blue twice."),
    ],
    "support-2": [
        ("observation", "How do I reset my Aurora X2 lamp after a power cut?"),
        ("action", "Hold the dimmer button on the Aurora X2 for 10 seconds; it blinks blue twice when the reset is done."),
    ],
    "support-3": [
        ("observation", "Can the Aurora X2 lamp connect to Wi-Fi?"),
        ("action", "Yes. Open the Lumio app, tap Add device and hold the Aurora X2 dimmer for 3 seconds to pair it."),
    ],
    "support-4": [
        ("observation", "What bulb does the Aurora X2 use?"),
        ("action", "The Aurora X2 uses a built-in 9 W LED module; it has no replaceable bulb."),
    ],
    "cooking-1": [
        ("observation", "How long should I boil an egg?"),
        ("action", "Boil it for 7 minutes for a firm yolk, then cool it in cold water."),
    ],
}
SYSTEM = "You are the support assistant for Lumio lamps. Answer in one sentence."


def show_report(message, memory: TrajectoryMemory) -> None:
    report = get_adaptation_report(message)
    meta = message.response_metadata["hullft"]
    if report.skipped:
        print(f"  adaptation skipped: {report.skip_reason}")
    else:
        print(f"  adapted: method {report.method}, n {report.n}, pool {report.pool_size}, "
              f"{report.steps} LoRA steps ({report.passes} forward-backward passes)")
        print("  selected memory rows (id, count, weight, similarity, episode: text):")
        rows = {row["id"]: row for row in memory.get(report.selected_ids)}
        for row_id, count, weight, sim in zip(report.selected_ids, report.counts, report.weights,
                                              report.similarities, strict=True):
            row = rows.get(row_id, {})
            text = row.get("text", "?")
            print(f"    {row_id[:8]}  x{count}  w={weight:.3f}  sim={sim:.3f}  {row.get('episode_id')}: "
                  f"{text[:60]}{'...' if len(text) > 60 else ''}")
    timings = {**{k: v for k, v in report.timings.items() if k != "total"}, **meta["timings"]}
    print("  timings: " + "  ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
    print(f"  tokens: {message.usage_metadata}   episode {meta['episode_id']}   logged {len(meta['logged_ids'])} rows")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hullft-chat-") as tmp:
        print("loading the embedder (all-MiniLM-L6-v2) and the model (smollm2-135m-instruct) ...")
        embedder = Embedder()
        memory = TrajectoryMemory.open(tmp, embedder=embedder, namespace="lumio-support")
        for episode_id, steps in PAST_EPISODES.items():
            memory.log_episode(episode_id, steps, task="support")
        print(f"memory: {memory.count()} rows from {len(PAST_EPISODES)} past episodes in {tmp}")

        config = AdapterConfig(
            selection=SelectionConfig(method="hullft", n=8, k=50),
            finetune=FinetuneConfig(lr=2e-3, max_length=128),
        )
        chat = ChatHullFT.from_pretrained(memory=memory, adapter_config=config, max_tokens=32, temperature=0.0,
                                          repetition_penalty=1.3)
        messages = [SystemMessage(SYSTEM), HumanMessage("How do I reset the Aurora X2 lamp?")]
        thread = {"configurable": {"thread_id": "customer-42"}}

        print("\nQ: How do I reset the Aurora X2 lamp?")
        base = chat.invoke(messages, adapt=False, log=False)
        print(f"base model   : {base.content.strip()}")
        answer = chat.invoke(messages, config=thread)
        print(f"adapted model: {answer.content.strip()}")
        show_report(answer, memory)

        follow_up = [*messages, answer, HumanMessage("And how do I pair it with Wi-Fi?")]
        print("\nQ: And how do I pair it with Wi-Fi?  (streamed)")
        sys.stdout.write("adapted model: ")
        final = None
        for chunk in chat.stream(follow_up, config=thread):
            sys.stdout.write(chunk.content)
            sys.stdout.flush()
            final = chunk if final is None else final + chunk
        print()
        show_report(final, memory)
        print(f"\nmemory now holds {memory.count()} rows ({memory.count(episode_id='customer-42')} from this thread)")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
