"""An agent that learns at test time while it plays a held-out TextWorld cooking game.

Runs offline on the packaged SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (31 s measured on an idle
2-core CPU, 8 commands):

    .venv/bin/python examples/textworld_agent.py [--mode per_task|per_query|none] [--steps 12]

1. Generates 4 training games and 1 held-out (test split) game, and logs the training games' expert
   and exploring episodes into a trajectory memory (window rows of 4 steps).
2. A `Runtime` over a `TestTimeAdapter` plays the held-out game through `TextWorldAgent`: before
   each command the model adapts on memory rows selected by HullFT (per_task: one adapter for the
   game, trained only on rows it has not seen yet), then `runtime.choose` scores every admissible
   command by log-likelihood in one packed forward pass and draws one; the observation and the
   command are logged back to memory (one commit per step).
3. Prints each step (the command, the model's probability of its text, what was trained and
   the time split) and the episode's result; `hullft-agent demo` compares the modes on more games.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time

from hullft_agent import AdapterConfig, Embedder, FinetuneConfig, SelectionConfig, TestTimeAdapter, load_model
from hullft_agent.agents import AgentConfig, StepRecord, TextWorldAgent
from hullft_agent.envs.textworld import CookingSettings, build_textworld_memory, generate_games
from hullft_agent.runtime import Runtime

SETTINGS = CookingSettings(recipe=1, take=1, rooms=1, open=True, cook=True, cut=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["per_task", "per_query", "none"], default="per_task")
    parser.add_argument("--steps", type=int, default=12, help="commands at most")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hullft-textworld-") as tmp:
        print("building the memory from 4 training games (expert + 2 exploring episodes each) ...")
        embedder = Embedder()
        memory = build_textworld_memory(tmp, "train", 4, settings=SETTINGS, embedder=embedder,
                                        granularity="window", window=4, progress=False)
        (game,) = generate_games("test", 1, SETTINGS, progress=False)
        print(f"memory: {memory.count()} rows; held-out game: {game.name}\n")
        config = AdapterConfig(selection=SelectionConfig(method="hullft", n=6, k=100),
                               finetune=FinetuneConfig(lr=1e-3, max_length=128), incremental=True)
        adapter = TestTimeAdapter(load_model(), embedder=embedder, source=memory, config=config)
        runtime = Runtime(adapter=adapter, memory=memory)
        options = {"adapt": False} if args.mode == "none" else {"mode": args.mode}
        agent = TextWorldAgent(runtime, AgentConfig(max_steps=args.steps, history=3), **options)

        def show(step: StepRecord) -> None:
            chance = math.exp(-step.action_bpb * math.log(2) * step.action_bytes)
            trained = f"trained {step.trained} of {step.selected} selected" if step.adapted else "not adapted"
            expert = "" if step.expert_action is None else f"   (engine's plan: {step.expert_action!r})"
            print(f"{step.step + 1:>2}. {step.action!r:<38} p(command text) {chance:.1e}  score {step.score}  "
                  f"{trained}, adapt {step.adapt_s:.1f} s, act {step.act_s:.1f} s{expert}")

        result = agent.play(game, label=args.mode, on_step=show)
        print(f"\n{result.outcome}: score {result.score}/{result.max_score} in {result.moves} commands "
              f"({result.reason}); {result.logged_rows} rows logged as episode {result.episode_id}")
        print(f"memory now holds {memory.count()} rows")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
