"""How long the command line takes to answer before any work: `alexnet --help`, `--version`
and `alexnet CMD --help` for every command, each the median of several runs in a fresh
process, against `python -c pass` (the interpreter's own start) as the baseline.

    python benchmarks/cli_startup.py            # 7 runs each
    python benchmarks/cli_startup.py --runs 15 --json

The target (issue 22) is under 1 s for each; the command bodies import torch, torchvision,
matplotlib and fastapi only when they run (docs/design.md says why).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from alexnet.runtime import cpu_name  # the benchmark's own process may import torch


def commands() -> list[list[str]]:
    """Every command line to time: the top level, then each (sub)command's --help."""
    from alexnet.cli import build_parser  # imports no torch: the thing measured

    lines = [["--help"], ["--version"]]

    def walk(parser, prefix: list[str]) -> None:
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    lines.append([*prefix, name, "--help"])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return lines


def median_wall(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=7, help="runs per command line (default 7)")
    p.add_argument("--json", action="store_true", help="one JSON object per command line")
    args = p.parse_args(argv)
    python = [sys.executable]
    baseline = median_wall([*python, "-c", "pass"], args.runs)
    rows = []
    for line in commands():
        wall = median_wall([*python, "-m", "alexnet", *line], args.runs)
        rows.append({"command": "alexnet " + " ".join(line), "median_s": wall})
    if args.json:
        for r in rows:
            print(json.dumps({**r, "baseline_s": baseline, "cpu": cpu_name(), "runs": args.runs}))
        return 0
    width = max(len(r["command"]) for r in rows)
    print(f"{cpu_name()}; median of {args.runs} runs each, fresh process")
    print(f"{'python -c pass (baseline)':<{width}}  {baseline:6.3f} s")
    for r in rows:
        over = r["median_s"] - baseline
        print(f"{r['command']:<{width}}  {r['median_s']:6.3f} s  (+{over:.3f} s over the baseline)")
    slowest = max(rows, key=lambda r: r["median_s"])
    print(f"slowest: {slowest['command']}, {slowest['median_s']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
