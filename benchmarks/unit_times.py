"""Mean per-unit times per method over part of an evaluation's results.jsonl.

    python benchmarks/unit_times.py ~/.cache/hullft-agent/bench_episodes/test/results.jsonl --after 49

A resumed run's summary averages times over every unit, including those that ran under other
conditions (another job on the CPU, other thread counts). `--after L` keeps only the units whose
records all come after the first L lines, so every method is timed under the same conditions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hullft_agent.evaluation.results import read_results  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="an evaluation's results.jsonl")
    parser.add_argument("--after", type=int, default=0, help="skip units with a record in the first L lines")
    args = parser.parse_args()
    records, _ = read_results(args.results)
    first_line: dict[str, int] = {}
    for line, record in enumerate(records):
        first_line.setdefault(record["unit"], line)
    units = {u for u, line in first_line.items() if line >= args.after}
    print(f"{len(units)} of {len(first_line)} units have every record after line {args.after}\n")
    print("| method | units | passes | finetune s/unit | total s/unit |\n|---|---:|---:|---:|---:|")
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method and r["unit"] in units]
        if rows:
            mean = statistics.fmean
            print(f"| {method} | {len(rows)} | {mean(r['passes'] for r in rows):.1f} | "
                  f"{mean(r['times']['finetune'] for r in rows):.2f} | {mean(r['times']['total'] for r in rows):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
