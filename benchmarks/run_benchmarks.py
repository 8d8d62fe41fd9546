"""Repeat `alexnet bench inference` / `alexnet bench train` and summarise the speedups.

Single runs on a small shared machine swing a lot, so this runs each benchmark several
times (each run is itself interleaved rounds with medians), optionally waiting before every
run until the CPU has been nearly idle for a few seconds, appends every JSON record to a
file and prints the median, min and max speedup over the runs.

    python benchmarks/run_benchmarks.py inference --repeat 3 --out results.jsonl
    python benchmarks/run_benchmarks.py train --data /tmp/cifar10-2k --repeat 3 \
        --out results.jsonl -- --steps 10 --rounds 3

Arguments after ``--`` go to the `alexnet bench ...` command unchanged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def cpu_idle_fraction(seconds: float = 3.0) -> float:
    """Share of CPU time spent idle over ``seconds`` (from /proc/stat; 1.0 elsewhere)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total

    try:
        i0, t0 = sample()
        time.sleep(seconds)
        i1, t1 = sample()
    except OSError:
        return 1.0
    return (i1 - i0) / max(1, t1 - t0)


def wait_for_quiet(min_idle: float, max_wait: float) -> float:
    """Block until the CPU was at least ``min_idle`` idle for 3 s, or ``max_wait`` passed."""
    start = time.time()
    idle = cpu_idle_fraction()
    while idle < min_idle and time.time() - start < max_wait:
        idle = cpu_idle_fraction()
    return idle


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("which", choices=["inference", "train"])
    p.add_argument("--data", help="image folder for the train benchmark")
    p.add_argument("--repeat", type=int, default=3, help="runs (default 3)")
    p.add_argument("--out", type=Path, help="append every JSON record to this file")
    p.add_argument(
        "--min-idle", type=float, default=0.9, help="wait for this idle share before each run"
    )
    p.add_argument(
        "--max-wait", type=float, default=600, help="give up waiting after this many seconds"
    )
    args = p.parse_args(argv)
    cmd = [sys.executable, "-m", "alexnet", "bench", args.which, "--json", *extra]
    if args.which == "train":
        if not args.data:
            p.error("train needs --data ROOT")
        cmd += ["--data", args.data]
    records: dict[str, list[dict]] = {}  # path ("torch", "onnxruntime-int8", ...) -> runs
    for run in range(args.repeat):
        idle = wait_for_quiet(args.min_idle, args.max_wait) if args.min_idle > 0 else None
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        for line in out.strip().splitlines():
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            rec["idle_before_run"] = None if idle is None else round(idle, 2)
            path = rec.get("path", "torch")
            records.setdefault(path, []).append(rec)
            print(
                f"run {run + 1} [{path}]: ours {rec['ours_ips']:.1f} img/s, baseline "
                f"{rec['baseline_ips']:.1f} img/s, speedup {rec['speedup']:.2f}x "
                f"(paired {rec['speedup_paired']:.2f}x), idle before {rec['idle_before_run']}, "
                f"load {rec['load_avg_1m']}",
                flush=True,
            )
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
    for path, runs in records.items():
        sp = [r["speedup"] for r in runs]
        print(
            f"{args.which} [{path}]: speedup median {statistics.median(sp):.2f}x over "
            f"{len(sp)} runs (min {min(sp):.2f}x, max {max(sp):.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
