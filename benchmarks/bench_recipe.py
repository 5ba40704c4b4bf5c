"""Does the model read the recipe? The choice a cooking game's recipe decides, with and without training.

    python benchmarks/bench_recipe.py --test-games 30                   # LoRA, 100 training games

The decision agent loses its games at the steps the recipe decides: how to cut the ingredient (chop,
dice or slice) and what to cook it with (oven for roast, stove for fry). Here each such walkthrough
state of held-out games is reduced to that choice alone: the expert's command against the same
command with the other cut or the other appliance (its *family*, all admissible). Scored in the
training format (`--format`, the recipe after the observation, `AgentConfig.keep_recipe`), under

- `base, no recipe`: the base model, the recipe taken out of the prompt (what a model that cannot read
  it would do);
- `base`: the base model with the recipe;
- `trained`: one model trained once (`--method lora|full`, `--epochs`, `--lr`) on the same choices of
  `--train-games` training games (the expert's command, loss on the command): the most favourable
  offline teaching the recipe could get — hundreds of examples of exactly this choice;
- `trained, whole prompt`: the same model answering the agent's whole prompt (system turns, earlier
  steps, the admissible commands) instead of the format it was trained in.

Reported: top-1 within the family (chance = 1 / family size; `majority` = always the training set's
most common cut / appliance), with bootstrap 95% CIs, and how much the recipe moves the expert's
log-probability against its family's mean (base with − base without). Writes
benchmarks/results/bench_recipe[_NAME].json and .md.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from hullft_agent.config import DECISION_FORMATS  # noqa: E402  (light: pydantic only)

RESULTS = ROOT / "benchmarks" / "results"
CUTS = ("chop", "dice", "slice")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-games", type=int, default=100)
    p.add_argument("--test-games", type=int, default=10)
    p.add_argument("--split", default="valid", choices=["valid", "test"])
    p.add_argument("--harder", action="store_true", help="recipe 2, take 2, 6 rooms")
    p.add_argument("--method", default="lora", choices=["lora", "full"])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--format", default="nosys-h0", choices=list(DECISION_FORMATS), help="training and scoring prompt format")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--name", default="")
    return p.parse_args()


def kind(command: str) -> str | None:
    """'cut' or 'cook' for the commands a recipe decides, else None."""
    verb = command.split()[0]
    return "cut" if verb in CUTS else "cook" if verb == "cook" else None


def family(command: str, admissible: list[str]) -> list[str]:
    """The admissible commands that differ from `command` only in what the recipe decides."""
    target = command.split(" with ")[0].split(maxsplit=1)[1]  # the ingredient
    same = [c for c in admissible if kind(c) == kind(command) and " with " in c
            and c.split(" with ")[0].split(maxsplit=1)[1] == target]
    return same if kind(command) == "cook" else [c for c in same if c.split()[0] in CUTS]


def decisive(command: str) -> str:
    """What the recipe decides in a command: the cut verb, or the cooking appliance."""
    return command.split()[0] if kind(command) == "cut" else command.split(" with ")[1]


def main() -> int:
    args = parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bench_decisions import settings
    from tqdm.auto import tqdm

    from hullft_agent.agents.textworld import AgentConfig
    from hullft_agent.agents.walkthroughs import expert_decision, state_prompt, walkthrough_states
    from hullft_agent.config import FinetuneConfig
    from hullft_agent.decisions import trim_prompt
    from hullft_agent.envs.textworld import generate_games
    from hullft_agent.evaluation.report import bootstrap_mean_ci
    from hullft_agent.finetune import behaviour_cloning
    from hullft_agent.models import load_model
    from hullft_agent.runtime.prompt import render_prompt
    from hullft_agent.runtime.scoring import score_continuations

    started = time.perf_counter()
    cooking = settings(args.harder)
    agent = AgentConfig(keep_recipe=True)
    fmt = DECISION_FORMATS[args.format]

    def recipe_states(split: str, count: int) -> list[Any]:
        states = [s for g in generate_games(split, count, cooking) for s in walkthrough_states(g, answer="engine")
                  if kind(s.expert)]
        return [s for s in states if len(family(s.expert, list(s.admissible))) > 1
                and "\n\nRecipe: " in state_prompt(agent, s)[-2]["content"]]

    train, test = recipe_states("train", args.train_games), recipe_states(args.split, args.test_games)
    if not train or not test:
        raise SystemExit(f"no recipe-decided states: {len(train)} training, {len(test)} held-out")
    counts = collections.Counter(decisive(s.expert) for s in train)
    by_kind = {k: collections.Counter({d: n for d, n in counts.items() if (d in CUTS) == (k == "cut")})
               for k in ("cut", "cook")}
    majority = {k: c.most_common(1)[0][0] if c else None for k, c in by_kind.items()}
    print(f"{len(train)} training choices ({dict(counts)}), {len(test)} held-out choices", file=sys.stderr)

    loaded = load_model()
    tok = loaded.tokenizer

    def score(model: Any, states: list[Any], with_recipe: bool, label: str, whole: bool = False) -> list[dict]:
        rows = []
        for s in tqdm(states, desc=label, unit="state", file=sys.stderr):
            messages = state_prompt(agent, s) if whole else trim_prompt(state_prompt(agent, s), fmt)
            if not with_recipe:  # the recipe follows the observation in the last user message
                last = max(i for i, m in enumerate(messages) if m["role"] == "user")
                messages[last] = {**messages[last], "content": messages[last]["content"].split("\n\nRecipe: ")[0]}
            options = family(s.expert, list(s.admissible))
            ids = tok(render_prompt(tok, messages), add_special_tokens=False)["input_ids"]
            encoded = [list(tok(c, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id] for c in options]
            scores = [sum(lp) for lp in score_continuations(model, ids, encoded)]
            target = options.index(s.expert)
            others = [x for i, x in enumerate(scores) if i != target]
            rows.append({"game": s.game, "index": s.index, "expert": s.expert, "family": options, "scores": scores,
                         "correct": float(max(range(len(scores)), key=scores.__getitem__) == target),
                         "margin": scores[target] - sum(others) / len(others)})
        return rows

    results = {"base, no recipe": score(loaded.model, test, False, "base, no recipe"),
               "base": score(loaded.model, test, True, "base")}
    t0 = time.perf_counter()
    rows = [{k: v for k, v in expert_decision(agent, s).items() if k in ("kind", "metadata")} for s in train]
    trained = behaviour_cloning(loaded.model, tok, rows, FinetuneConfig(method=args.method, lr=args.lr, max_length=512),
                                fmt=fmt, epochs=args.epochs, seed=0)
    training = {**trained.to_dict(), "seconds": time.perf_counter() - t0}
    results["trained"] = score(trained.model, test, True, "trained")
    results["trained, whole prompt"] = score(trained.model, test, True, "trained, whole prompt", whole=True)

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"states": len(rows)}
        for k in ("cut", "cook", "all"):
            part = [r for r in rows if k == "all" or kind(r["expert"]) == k]
            hits = [r["correct"] for r in part]
            out[k] = {"states": len(part), "top1": sum(hits) / len(hits), "top1_ci": bootstrap_mean_ci(hits),
                      "margin": sum(r["margin"] for r in part) / len(part)}
        return out

    summaries = {name: summary(rows) for name, rows in results.items()}
    chance = {k: [1 / len(r["family"]) for r in results["base"] if k == "all" or kind(r["expert"]) == k]
              for k in ("cut", "cook", "all")}
    hits = {k: [float(decisive(r["expert"]) == majority[kind(r["expert"])]) for r in results["base"]
                if k == "all" or kind(r["expert"]) == k] for k in ("cut", "cook", "all")}
    summaries["chance"] = {k: {"states": len(v), "top1": sum(v) / len(v)} for k, v in chance.items()}
    summaries["majority"] = {k: {"states": len(v), "top1": sum(v) / len(v)} for k, v in hits.items()}
    sensitivity = [a["margin"] - b["margin"] for a, b in zip(results["base"], results["base, no recipe"], strict=True)]

    header = ["condition", "cut top-1 [95% CI]", "cook top-1 [95% CI]", "all top-1 [95% CI]", "margin (nats)"]
    table = [header]
    for name, s in summaries.items():
        cells = []
        for k in ("cut", "cook", "all"):
            ci = s[k].get("top1_ci")
            cells.append(f"{s[k]['top1']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + f" (n {s[k]['states']})")
        table.append([name, *cells, f"{s['all']['margin']:+.2f}" if "margin" in s["all"] else "-"])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table))
    shift = sum(sensitivity) / len(sensitivity)
    lo, hi = bootstrap_mean_ci(sensitivity)
    print(f"the recipe moves the expert's margin by {shift:+.2f} nats in the base model "
          f"(95% CI [{lo:+.2f}, {hi:+.2f}]); training: {training['steps']} steps, {training['seconds']:.0f} s, "
          f"loss {training['first_loss']:.3f} -> {training['last_loss']:.3f}; time {time.perf_counter() - started:.0f} s")

    suffix = f"_{args.name}" if args.name else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/bench_recipe.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "args": vars(args), "training_choices": dict(counts), "majority": majority, "training": training,
        "summary": summaries, "recipe_shift_nats": shift, "recipe_shift_ci": bootstrap_mean_ci(sensitivity),
        "per_state": results, "seconds": time.perf_counter() - started,
    }
    (RESULTS / f"bench_recipe{suffix}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (RESULTS / f"bench_recipe{suffix}.md").write_text(
        f"# bench_recipe{suffix}\n\n`{payload['command']}` ({payload['date']})\n\n"
        + "\n".join("| " + " | ".join(r) + " |" for r in table[:1]) + "\n|" + "---|" * len(header) + "\n"
        + "\n".join("| " + " | ".join(r) + " |" for r in table[1:])
        + f"\n\nrecipe shift in the base model: {shift:+.2f} nats; training {training}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
