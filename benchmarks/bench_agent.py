"""The TextWorld agent with and without test-time adaptation, on held-out games: score, steps, wins,
latency split into adapt / act, and BPB of the commands.

    python benchmarks/bench_agent.py                      # 10 held-out games x 4 modes (~45 min on a 2-core CPU)
    python benchmarks/bench_agent.py --test-games 3 --modes none per_task   # the demo's size
    python benchmarks/bench_agent.py --threads 1          # on a machine where another job holds a core
    python benchmarks/bench_agent.py --modes none bc decisions decisions_knn --test-games 20 --study-games 0 \
        --name 20                                         # 20 games, offline BC against decision adaptation
    python benchmarks/bench_agent.py --harder             # recipe 2, take 2, 6 rooms (bench_episodes' games)

Two parts, both on SmolLM2-135M-Instruct (packaged) and all-MiniLM-L6-v2:

1. Scoring rule: on the walkthrough states of `--study-games` valid-split games the base model ranks the
   admissible commands by the sum of their token log-probabilities and by the per-token mean; the
   table gives how often the walkthrough's command is ranked first, its mean reciprocal rank, and the
   probability the rule's softmax gives it (what the sampling agent draws with). This decides
   `hullft_agent.runtime.DEFAULT_SCORING`.
2. The agent (`hullft_agent.agents.compare.run_comparison`) plays `--test-games` test-split
   games once per mode (`--modes`, any of `hullft_agent.agents.MODES`): none, per_query HullFT,
   per_task HullFT (incremental ledger), kNN per_query, the decision modes, and `bc` (one LoRA
   trained once on the training memory's decision rows, then fixed), all at the same N, on the same
   games with the same per-step seeds, each mode from its own copy of the training memory (expert +
   exploring episodes, and the walkthrough decisions for decision modes and bc) plus its own
   episodes as it plays. The continual table follows each mode along the stream of games (second
   half minus first half, against none's on the same games).

Writes benchmarks/results/bench_agent[_harder][_NAME].json (config, machine, scoring study, per-mode
totals, one-off setup such as bc's training, paired score differences, the continual summary,
per-game results), the same name .md (the report) and _scores.png / _latency.png / _continual.png;
the memories and the running results.json (rewritten after every game, so a stopped run keeps its
games) stay in --work-dir (default ~/.cache/hullft-agent/bench_agent/<the same suffix>). Timings are
wall clock on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hullft_agent.config import DECISION_FORMATS  # noqa: E402  (light: pydantic only)

RESULTS = ROOT / "benchmarks" / "results"
WORK = Path("~/.cache/hullft-agent/bench_agent").expanduser()


def scoring_study(agent: Any, games: list[Path]) -> dict[str, Any]:
    """Rank the walkthrough command among the admissible ones at each walkthrough state, per rule."""
    from hullft_agent.envs.textworld import NO_OUTPUT, clean_observation, start_game
    from hullft_agent.runtime import Call

    ranks: dict[str, list[int]] = {"sum": [], "mean": []}
    probs: dict[str, list[float]] = {"sum": [], "mean": []}
    for game in games:
        env, state = start_game(game)
        try:
            objective = str(state["objective"] or "")
            observation = clean_observation(state.feedback)
            if objective not in observation:
                observation = f"{objective}\n\n{observation}" if observation != NO_OUTPUT else objective
            history: list[tuple[str, str]] = []
            for command in state["extra.walkthrough"]:
                admissible = sorted(set(state["admissible_commands"] or []))
                if command not in admissible:
                    break
                call = Call(agent.conversation(history, observation, objective, admissible), adapt=False, log=False)
                result = agent.runtime.choose(call, admissible)
                target = admissible.index(command)
                for rule in ranks:
                    lps = result.token_logprobs
                    scores = [sum(x) if rule == "sum" else sum(x) / len(x) for x in lps]
                    ranks[rule].append(1 + sum(s > scores[target] for s in scores))
                    top = max(scores)
                    weights = [math.exp(s - top) for s in scores]
                    probs[rule].append(weights[target] / sum(weights))
                state, _, _ = env.step(command)
                history.append((observation, command))
                observation = clean_observation(state.feedback)
        finally:
            env.close()
    out: dict[str, Any] = {"states": len(ranks["sum"]), "games": len(games)}
    for rule in ranks:
        r = ranks[rule]
        out[rule] = {"top1": sum(x == 1 for x in r) / len(r), "mrr": sum(1 / x for x in r) / len(r),
                     "expert_probability": sum(probs[rule]) / len(probs[rule])}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["none", "per_query", "per_task", "knn"])
    parser.add_argument("--harder", action="store_true", help="recipe 2, take 2, 6 rooms (bench_episodes' games)")
    parser.add_argument("--name", default="", help="suffix of the result files and the work dir")
    parser.add_argument("--train-games", type=int, default=8)
    parser.add_argument("--test-games", type=int, default=10)
    parser.add_argument("--expert-answers", default="engine", choices=["walkthrough", "engine"],
                        help="answers of the training games' walkthrough decisions (CompareConfig.expert_answers)")
    parser.add_argument("--split", default="test", choices=["valid", "test"], help="split of the played games")
    parser.add_argument("--study-games", type=int, default=5, help="games of the scoring-rule study (0: skip it)")
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--avoid-repeats", type=int, default=0,
                        help="the agent does not replay its last this many commands (AgentConfig.avoid_repeats)")
    parser.add_argument("--recipe", action=argparse.BooleanOptionalAction, default=False,
                        help="the agent's prompt keeps the cookbook's recipe once read (AgentConfig.keep_recipe)")
    parser.add_argument("--prompt-format", default=None, choices=list(DECISION_FORMATS),
                        help="the agent answers its prompt trimmed to this format, and decision modes and bc train in "
                        "it (CompareConfig.prompt_format; default: the whole prompt)")
    parser.add_argument("--bc-epochs", type=int, default=2, help="bc: passes over the training decisions")
    parser.add_argument("--lora-layers", type=int, default=None,
                        help="test-time LoRA on the last this many transformer blocks (default: all)")
    parser.add_argument("--max-instances", type=int, default=None,
                        help="adapting modes train at most this many instances per command (default: all selected)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--work-dir", default=None,
                        help=f"memories, running results and the report (default {WORK}/<suffix or 'default'>)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="WORK_DIR",
                        help="play nothing: merge the runs in these work dirs (other modes, same games and settings, "
                        "e.g. one process per core) into one report and result file")
    parser.add_argument("--json", default=None, help="result file (default benchmarks/results/bench_agent[_harder][_NAME].json)")
    args = parser.parse_args(argv)
    suffix = "".join(f"_{part}" for part in ("harder" if args.harder else "", args.name) if part)
    if args.json is None:
        args.json = str(RESULTS / f"bench_agent{suffix}.json")
    if args.work_dir is None:
        args.work_dir = str(WORK / (suffix.lstrip("_") or "default"))
    return args


def make_config(args: argparse.Namespace) -> Any:
    """The comparison's settings from the flags (`--harder`: recipe 2, take 2, 6 rooms)."""
    from hullft_agent.agents import CompareConfig

    harder = {"recipe": 2, "take": 2, "rooms": 6} if args.harder else {}
    return CompareConfig(modes=args.modes, train_games=args.train_games, test_games=args.test_games, n=args.n,
                         k=args.k, lr=args.lr, max_steps=args.max_steps, temperature=args.temperature,
                         seed=args.seed, keep_recipe=args.recipe, split=args.split,
                         expert_answers=args.expert_answers, avoid_repeats=args.avoid_repeats,
                         prompt_format=DECISION_FORMATS.get(args.prompt_format), bc_epochs=args.bc_epochs,
                         lora_layers=args.lora_layers, max_instances=args.max_instances, **harder)


def main() -> int:
    args = parse_args()
    config = make_config(args)  # bad flags fail here, before the models load

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from hullft_agent.agents import TextWorldAgent, run_comparison, summary_text, write_report
    from hullft_agent.agents.compare import load_comparison, merge_comparisons
    from hullft_agent.embedding import Embedder
    from hullft_agent.envs.textworld import generate_games
    from hullft_agent.models import load_model
    from hullft_agent.runtime import Runtime

    start = time.perf_counter()
    study = None
    if not args.merge:
        embedder = Embedder()
        model = load_model()
    if args.study_games and not args.merge:
        t0 = time.perf_counter()
        games = generate_games("valid", args.study_games, config.cooking(), seed0=args.seed, progress=False)
        study = scoring_study(TextWorldAgent(Runtime(model), config.agent()), games)
        study["seconds"] = time.perf_counter() - t0
        print(f"scoring rule, base model, walkthrough command among the admissible ones ({study['states']} states "
              f"of {study['games']} games):")
        for rule in ("sum", "mean"):
            s = study[rule]
            print(f"  {rule:<4}  ranked first {100 * s['top1']:.0f}%  MRR {s['mrr']:.3f}  "
                  f"softmax probability {s['expert_probability']:.3f}")
        print()
    if args.merge:
        result = merge_comparisons([load_comparison(d) for d in args.merge], args.work_dir)
    else:
        result = run_comparison(config, args.work_dir, model=model, embedder=embedder)
    if study is not None:
        result.notes.append(
            f"scoring rule (base model, walkthrough command on {study['states']} states of {study['games']} games): "
            + "; ".join(f"{r}: first {100 * study[r]['top1']:.0f}%, MRR {study[r]['mrr']:.3f}, "
                        f"softmax probability {study[r]['expert_probability']:.3f}" for r in ("sum", "mean"))
        )
        write_report(result)
    print(summary_text(result))
    payload = {
        "benchmark": "bench_agent",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/bench_agent.py", *sys.argv[1:]]),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpu_threads": torch.get_num_threads(), "torch": torch.__version__},
        "scoring_study": study,
        **result.to_dict(),
        "wall_s": time.perf_counter() - start,
    }
    target = Path(args.json)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    report = (result.out_dir / "report.md").read_text(encoding="utf-8")
    for plot in ("scores.png", "latency.png", "continual.png"):
        if (result.out_dir / plot).exists():
            shutil.copyfile(result.out_dir / plot, target.with_name(f"{target.stem}_{plot}"))
            report = report.replace(f"({plot})", f"({target.stem}_{plot})")
    target.with_suffix(".md").write_text(report, encoding="utf-8")
    print(f"\nwrote {target}, {target.with_suffix('.md')} and the plots in {payload['wall_s']:.0f} s")
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
