"""Offline decision benchmark: does the adapted model rank the expert's command first?

    python benchmarks/bench_decisions.py                           # 10 held-out test games, all conditions
    python benchmarks/bench_decisions.py --split valid --test-games 3 --conditions hullft \
        --formats full nosys-h1 nosys-h0 --name formats             # choose the training format (valid split)
    python benchmarks/bench_decisions.py --harder                  # recipe 2, take 2, 6 rooms

At every walkthrough state of the held-out games the agent's prompt (`agents.textworld.agent_prompt`)
is scored against each admissible command (`Runtime.choose`, sum of log-probabilities), under:

- `base`: no adaptation;
- `transcripts`: today's adaptation (HullFT on 4-step window rows of expert and exploring episodes,
  loss on every token);
- `bc`: offline behaviour cloning (`hullft_agent.finetune.behaviour_cloning`, as the agent comparison's
  `bc` mode), one LoRA trained once on every decision row of the training memory (answer loss,
  `--bc-epochs` epochs), no test-time adaptation;
- `knn`, `sift`, `hullft`: decision-aware test-time adaptation, per state, on the N decision rows
  (prompt -> expert command, loss on the command) each method selects for the state;
- `bc_hullft`: both: `hullft` on top of the `bc` model (its LoRA merged into the weights).

`--prompt-format` trims the prompt the model answers (`AgentConfig.prompt_format`); give the training
format the same name (`--formats`) and the model acts on exactly what it was trained on.

The memory's decision rows are the walkthrough states of `--train-games` training games (actor
expert, outcome won). Per condition: top-1 agreement with the expert, MRR, mean probability of the
expert's command (softmax of the scores), adapt and act seconds per state, with bootstrap 95% CIs
over states and the paired difference against `bc`. Writes benchmarks/results/bench_decisions[_NAME].json
and .md. Run one benchmark at a time (torch uses both cores).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hullft_agent.config import DECISION_FORMATS  # noqa: E402  (light: pydantic only)

RESULTS = ROOT / "benchmarks" / "results"
WORK = Path("~/.cache/hullft-agent/bench_decisions").expanduser()
DECISION_METHODS = ("hullft", "knn", "sift")
CONDITIONS = ("base", "bc", *DECISION_METHODS, "bc_hullft", "transcripts")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="test", choices=["valid", "test"], help="held-out split of the scored games")
    p.add_argument("--train-games", type=int, default=10)
    p.add_argument("--test-games", type=int, default=10)
    p.add_argument("--harder", action="store_true", help="recipe 2, take 2, 6 rooms (bench_episodes' games)")
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    p.add_argument("--formats", nargs="+", default=["nosys-h1"], choices=list(DECISION_FORMATS),
                   help="training formats of the decision conditions (each one is a separate condition)")
    p.add_argument("--n", type=int, default=6, help="N: instances per selected multiset")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=512, help="training sequences are cut to this many tokens")
    p.add_argument("--bc-epochs", type=int, default=2)
    p.add_argument("--recipe", action=argparse.BooleanOptionalAction, default=False,
                   help="the agent's prompt keeps the cookbook's recipe once read (AgentConfig.keep_recipe)")
    p.add_argument("--prompt-format", default=None, choices=list(DECISION_FORMATS),
                   help="the model answers the agent's prompt trimmed to this format (AgentConfig.prompt_format; "
                   "default: the whole prompt)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--name", default="", help="suffix of the result files")
    p.add_argument("--work-dir", type=Path, default=WORK)
    return p.parse_args()


def settings(harder: bool) -> Any:
    from hullft_agent.agents.compare import CompareConfig

    base = CompareConfig()
    if harder:
        base = base.model_copy(update={"recipe": 2, "take": 2, "rooms": 6})
    return base.cooking()


def summarise(rows: list[dict[str, Any]], reference: list[dict[str, Any]] | None) -> dict[str, Any]:
    from hullft_agent.evaluation.report import bootstrap_mean_ci

    top1 = [float(r["rank"] == 1) for r in rows]
    rr = [1.0 / r["rank"] for r in rows]
    prob = [r["p_expert"] for r in rows]
    out = {
        "states": len(rows),
        "top1": sum(top1) / len(top1), "top1_ci": bootstrap_mean_ci(top1),
        "mrr": sum(rr) / len(rr), "mrr_ci": bootstrap_mean_ci(rr),
        "p_expert": sum(prob) / len(prob), "p_expert_ci": bootstrap_mean_ci(prob),
        "adapt_s": sum(r["adapt_s"] for r in rows) / len(rows),
        "act_s": sum(r["act_s"] for r in rows) / len(rows),
        "selected_distinct": sum(r["distinct"] for r in rows) / len(rows),
    }
    if reference is not None:
        diffs = [float(a["rank"] == 1) - float(b["rank"] == 1) for a, b in zip(rows, reference, strict=True)]
        out["top1_minus_bc"] = sum(diffs) / len(diffs)
        out["top1_minus_bc_ci"] = bootstrap_mean_ci(diffs)
        out["better_than_bc"] = sum(d > 0 for d in diffs)
        out["worse_than_bc"] = sum(d < 0 for d in diffs)
    return out


def score_states(runtime: Any, config: Any, states: list[Any], overrides: Any, adapt: bool, label: str) -> list[dict]:
    from tqdm.auto import tqdm

    from hullft_agent.agents.walkthroughs import state_context, state_prompt
    from hullft_agent.runtime import Call, SamplingParams

    rows = []
    for state in tqdm(states, desc=label, unit="state", file=sys.stderr):
        call = Call(conversation=state_prompt(config, state), context=state_context(config, state),
                    sampling=SamplingParams(max_new_tokens=8), task=state.game, episode_id=f"bench/{state.game}",
                    adapt=adapt, overrides=overrides, log=False)
        result = runtime.choose(call, list(state.admissible), scoring="sum")
        target = list(state.admissible).index(state.expert)
        top = max(result.scores)
        weights = [math.exp(s - top) for s in result.scores]
        rows.append({
            "game": state.game, "index": state.index, "expert": state.expert, "chosen": result.text,
            "rank": 1 + sum(s > result.scores[target] for s in result.scores),
            "p_expert": weights[target] / sum(weights), "n_admissible": len(state.admissible),
            "adapt_s": result.call.timings.get("adapt", 0.0), "act_s": result.call.timings.get("score", 0.0),
            "distinct": len(result.report.selected_ids), "steps": result.report.steps,
            "decisions": result.report.decisions, "skip": result.report.skip_reason,
        })
    return rows


def report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]], timings: dict[str, float],
           train_games: list[Path], test_games: list[Path], train_decisions: int, test_states: list[Any],
           started: float) -> None:
    """Print the table and (re)write the result files: called after every condition, so a stopped run keeps its work."""
    import torch

    reference = results.get("bc")
    summary = {name: summarise(r, reference if name != "bc" else None) for name, r in results.items()}
    header = ["condition", "states", "top-1 [95% CI]", "MRR", "P(expert)", "adapt s", "act s", "rows/state",
              "top-1 − bc [95% CI]"]
    table = [header]
    for name, s in summary.items():
        lo, hi = s["top1_ci"]
        diff = (f"{s['top1_minus_bc']:+.3f} [{s['top1_minus_bc_ci'][0]:+.3f}, {s['top1_minus_bc_ci'][1]:+.3f}]"
                if "top1_minus_bc" in s else "-")
        table.append([name, str(s["states"]), f"{s['top1']:.3f} [{lo:.3f}, {hi:.3f}]", f"{s['mrr']:.3f}",
                      f"{s['p_expert']:.3f}", f"{s['adapt_s']:.2f}", f"{s['act_s']:.2f}",
                      f"{s['selected_distinct']:.1f}", diff])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    print("\n".join(lines))
    chance = sum(1 / len(s.admissible) for s in test_states) / len(test_states)
    print(f"chance top-1: {chance:.3f}; time {time.perf_counter() - started:.0f} s")

    suffix = f"_{args.name}" if args.name else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/bench_decisions.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "games": {"train": [g.stem for g in train_games], "test": [g.stem for g in test_games]},
        "train_decisions": train_decisions, "chance_top1": chance, "timings": timings,
        "summary": summary, "per_state": results, "seconds": time.perf_counter() - started,
    }
    (RESULTS / f"bench_decisions{suffix}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / f"bench_decisions{suffix}.md").write_text(
        f"# bench_decisions{suffix}\n\n`{payload['command']}` ({payload['date']})\n\n" + "\n".join(
            ["| " + " | ".join(row) + " |" for row in table[:1]] + ["|" + "---|" * len(header)]
            + ["| " + " | ".join(row) + " |" for row in table[1:]]) + f"\n\nchance top-1: {chance:.3f}\n")


def main() -> int:
    args = parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from hullft_agent.adapter import TestTimeAdapter
    from hullft_agent.agents.textworld import AgentConfig
    from hullft_agent.agents.walkthroughs import expert_decision, walkthrough_states
    from hullft_agent.candidates import InMemoryCandidates
    from hullft_agent.config import AdapterConfig, AdaptOverrides, FinetuneConfig, LearnFrom
    from hullft_agent.embedding import Embedder
    from hullft_agent.envs.textworld import build_textworld_memory_with_summary, generate_games
    from hullft_agent.finetune import behaviour_cloning
    from hullft_agent.models import load_model
    from hullft_agent.runtime import Runtime

    started = time.perf_counter()
    cooking = settings(args.harder)
    train_games = generate_games("train", args.train_games, cooking)
    test_games = generate_games(args.split, args.test_games, cooking)
    train_states = [s for g in train_games for s in walkthrough_states(g)]
    test_states = [s for g in test_games for s in walkthrough_states(g)]
    print(f"{len(train_states)} training decisions from {len(train_games)} games; {len(test_states)} "
          f"{args.split} states from {len(test_games)} games "
          f"({sum(len(s.admissible) for s in test_states) / len(test_states):.1f} admissible commands per state)",
          file=sys.stderr)

    loaded = load_model()
    embedder = Embedder()
    finetune = FinetuneConfig(lr=args.lr, max_length=args.max_length)
    config = AdapterConfig(finetune=finetune)
    # the agent's prompt settings: the same for every condition
    prompts = AgentConfig(keep_recipe=args.recipe, prompt_format=DECISION_FORMATS.get(args.prompt_format))
    rows = [expert_decision(prompts, s) for s in train_states]
    pool = InMemoryCandidates(
        [r["text"] for r in rows], embedder.encode([r["text"] for r in rows]),
        ids=[f"{r['episode_id']}#{r['metadata']['walkthrough_step']}" for r in rows],
        episodes=[r["episode_id"] for r in rows], tasks=[r["task"] for r in rows],
        rows=[{"kind": r["kind"], "reward": r["reward"], "outcome": r["outcome"], "metadata": r["metadata"]}
              for r in rows],
    )
    adapter = TestTimeAdapter(loaded, embedder=embedder, source=pool, config=config)
    results: dict[str, list[dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    runtime = Runtime(adapter=adapter)

    if "base" in args.conditions:
        results["base"] = score_states(runtime, prompts, test_states, None, False, "base")
        report(args, results, timings, train_games, test_games, len(train_states), test_states, started)
    bc_model = None
    if {"bc", "bc_hullft"} & set(args.conditions):
        t0 = time.perf_counter()
        copy = load_model()  # BC trains its own copy: the adapter's model stays the base
        bc = behaviour_cloning(copy.model, copy.tokenizer, pool.rows, finetune, fmt=DECISION_FORMATS[args.formats[0]],
                               epochs=args.bc_epochs, seed=0)
        timings["bc_train_s"] = time.perf_counter() - t0
        bc_model = bc.merged()
    if "bc" in args.conditions:
        results["bc"] = score_states(Runtime(bc_model, loaded.tokenizer), prompts, test_states, None, False, "bc")
        report(args, results, timings, train_games, test_games, len(train_states), test_states, started)
    for method in (m for m in DECISION_METHODS if m in args.conditions):
        for name in args.formats:
            overrides = AdaptOverrides(method=method, n=args.n, k=args.k, learn_from=LearnFrom(kinds=["decision"]),
                                       decision_format=DECISION_FORMATS[name])
            label = method if len(args.formats) == 1 else f"{method}/{name}"
            results[label] = score_states(runtime, prompts, test_states, overrides, True, label)
            report(args, results, timings, train_games, test_games, len(train_states), test_states, started)

    if "bc_hullft" in args.conditions:  # test-time HullFT on top of the behaviour-cloned model
        warm = TestTimeAdapter(bc_model, loaded.tokenizer, embedder=embedder, source=pool, config=config)
        overrides = AdaptOverrides(method="hullft", n=args.n, k=args.k, learn_from=LearnFrom(kinds=["decision"]),
                                   decision_format=DECISION_FORMATS[args.formats[0]])
        results["bc_hullft"] = score_states(Runtime(adapter=warm), prompts, test_states, overrides, True, "bc_hullft")
        report(args, results, timings, train_games, test_games, len(train_states), test_states, started)

    if "transcripts" in args.conditions:
        memory, _ = build_textworld_memory_with_summary(
            args.work_dir / f"transcripts-{'harder' if args.harder else 'default'}-{args.train_games}", "train",
            args.train_games, settings=cooking, embedder=embedder, granularity="window", window=4)
        overrides = AdaptOverrides(method="hullft", n=args.n, k=args.k,
                                   finetune=finetune.model_copy(update={"max_length": 128}))
        results["transcripts"] = score_states(Runtime(adapter=adapter, source=memory), prompts, test_states, overrides,
                                              True, "transcripts")
        report(args, results, timings, train_games, test_games, len(train_states), test_states, started)
    report(args, results, timings, train_games, test_games, len(train_states), test_states, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
