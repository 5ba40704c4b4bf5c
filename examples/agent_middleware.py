"""`create_agent` with `HullFTMiddleware`: an agent that learns from its own trajectory memory.

Runs offline on the packaged SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (about a minute on a
2-core CPU):

    .venv/bin/python examples/agent_middleware.py

SmolLM2-135M cannot call tools, so this agent uses the simplest honest protocol: each user message is
an observation from a text game and the model's plain answer is the next command (no tools, so each
agent run is one model call; the thread's checkpointer keeps the conversation). What the middleware does around every model call:

- before it: tells the model the task and episode (here per_task mode, keyed by the thread), and the
  model adapts: it selects rows of past episodes from memory (never the running episode) and runs a
  few LoRA steps; in per_task mode the thread's adapter is kept and trained further on the next turn;
- after it: logs the step (the observation and the command) to memory under the thread's episode.

Thread `game-1` plays three turns, each answer also logged as a decision row (the prompt the model
answered and its command); the game is then marked won, and a new thread `game-2` adapts only on
decisions of won games: what `game-1` did.
"""

from __future__ import annotations

import logging
import tempfile
import time

from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_hullft import ChatHullFT, HullFTMiddleware, get_adaptation_report
from langgraph.checkpoint.memory import InMemorySaver

from hullft_agent import AdapterConfig, Embedder, FinetuneConfig, SelectionConfig
from hullft_agent.config import LearnFrom
from hullft_agent.memory import TrajectoryMemory

PAST_EPISODES = {
    "past-1": [
        ("observation", "You are in a kitchen. There is a closed fridge and a counter."),
        ("action", "open fridge"),
        ("observation", "You open the fridge. Inside is a yellow potato."),
        ("action", "take yellow potato"),
        ("observation", "You take the yellow potato. A knife lies on the counter."),
        ("action", "take knife"),
    ],
    "past-2": [
        ("observation", "You are in a kitchen. The fridge is closed. A stove stands in the corner."),
        ("action", "open fridge"),
        ("observation", "The fridge holds a red apple and a carrot."),
        ("action", "take carrot"),
    ],
    "past-3": [
        ("observation", "You are in a garden. A shovel leans against the fence."),
        ("action", "take shovel"),
    ],
}
SYSTEM = (
    "You are playing a text adventure. Reply with exactly one short command in lower case, "
    "like 'open fridge' or 'take apple'. No explanations."
)
GAME_1 = [
    "You are in a kitchen. There is a closed fridge here.",
    "You open the fridge. Inside is a yellow potato.",
    "You take the yellow potato. A knife lies on the counter.",
]
GAME_2 = ["You are in a kitchen. The fridge is closed and a stove stands in the corner."]
QUESTION = "What do you do? Answer with a command."


def play(agent, memory: TrajectoryMemory, thread: str, observations: list[str]) -> None:
    config = {"configurable": {"thread_id": thread}}
    for turn, observation in enumerate(observations, 1):
        t0 = time.perf_counter()
        state = agent.invoke({"messages": [HumanMessage(f"{observation}\n{QUESTION}")]}, config)
        answer = state["messages"][-1]
        report = get_adaptation_report(answer)
        meta = answer.response_metadata["hullft"]
        print(f"[{thread} turn {turn}] observation: {observation}")
        print(f"  command: {answer.content.strip()!r}   ({time.perf_counter() - t0:.1f} s)")
        if report.skipped:
            print(f"  adaptation skipped: {report.skip_reason}")
        else:
            rows = {r["id"]: r for r in memory.get(report.selected_ids)}
            chosen = ", ".join(
                f"{rows[i]['episode_id']}#{rows[i]['step']} x{c}" for i, c in zip(report.selected_ids, report.counts,
                                                                                  strict=True) if i in rows
            )
            print(f"  adapted ({report.mode}, task {report.task}): {report.steps} LoRA steps on {chosen}")
        print(f"  timings: adapt {meta['timings']['adapt'] * 1000:.0f} ms (finetune "
              f"{report.timings.get('finetune', 0) * 1000:.0f} ms), generate {meta['timings']['generate'] * 1000:.0f} ms")
    logged = sorted(memory.table.search().where(f"episode_id = '{thread}'").limit(100).to_list(),
                    key=lambda r: r["step"])
    print(f"  memory rows logged for {thread}: " + "; ".join(f"{r['kind']}: {r['text'][:40]}" for r in logged))


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hullft-agent-") as tmp:
        print("loading the embedder (all-MiniLM-L6-v2) and the model (smollm2-135m-instruct) ...")
        memory = TrajectoryMemory.open(tmp, embedder=Embedder(), namespace="text-games")
        for episode_id, steps in PAST_EPISODES.items():
            memory.log_episode(episode_id, steps, task="cooking")
        print(f"memory: {memory.count()} rows from {len(PAST_EPISODES)} past episodes\n")
        config = AdapterConfig(
            selection=SelectionConfig(method="hullft", n=6, k=50),
            finetune=FinetuneConfig(lr=1e-3, max_length=128),
        )
        chat = ChatHullFT.from_pretrained(memory=memory, adapter_config=config, max_tokens=12,
                                          temperature=0.0, stop=["\n"])
        agent = create_agent(
            chat,
            tools=[],
            system_prompt=SYSTEM,
            middleware=[HullFTMiddleware(mode="per_task", log_decisions=True)],
            checkpointer=InMemorySaver(),
        )
        play(agent, memory, "game-1", GAME_1)
        memory.finish_episode("game-1", outcome="won")
        chat.learn_from = LearnFrom(kinds=["decision"], outcomes=["won"])  # from now on: decisions of won games only
        print("\ngame-1 marked won; later calls adapt only on decisions of won games\n")
        play(agent, memory, "game-2", GAME_2)
        print(f"\nmemory now holds {memory.count()} rows")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
