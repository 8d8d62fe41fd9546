"""Promise 1 of docs/reliability.md: a kill never loses the run.

Ten SIGKILLs at chosen and random moments of one training run (``alexnet train`` in its own
process, forked from one that has done the imports); ``ALEXNET_TEST_SLOW_WRITE`` (read only
by alexnet.atomic and alexnet.io.checkpoint) stretches every atomic write so that kills land
inside checkpoint writes and between their renames. The run never killed that it must match
is a plain ``python -m alexnet train``.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from reliability_utils import (
    EXACT_COLUMNS,
    SLOW_WRITE_ENV,
    TINY_FLAGS,
    alexnet_cmd,
    all_finite,
    assert_same_tensors,
    cli_env,
    forked_cli,
    leftover_temp_files,
    metric_rows,
    read_safetensors,
    stop_forkserver,
)

from alexnet.io.checkpoint import load_checkpoint
from alexnet.io.metrics_csv import read_metrics


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_the_run(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Ten SIGKILLs: before the first checkpoint, at random instants, in the middle of a
    checkpoint write (a test hook slows every atomic write down to widen that window),
    between the two renames that keep last.prev.pt, and while the finished run writes its
    model file. After each one every checkpoint under its final name loads, nothing is
    lost, and `--resume` carries on; the end result is bit-identical to a run never killed."""
    epochs = 8
    base = ["train", *TINY_FLAGS, "--epochs", str(epochs), "--run-dir", "runs"]
    # the uninterrupted run, a plain `python -m alexnet train`, side by side with the kills
    ref = subprocess.Popen(
        alexnet_cmd(*base, "--name", "ref"),
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ref_dir = tmp_path / "runs" / "ref"

    run_dir = tmp_path / "runs" / "killed"
    ck = run_dir / "checkpoints"
    slow_env = cli_env(tmp_path, **{SLOW_WRITE_ENV: "0.2"})  # 4 pieces of 50 ms per write
    rng = random.Random(7)
    plan = [
        "before_checkpoint",
        "random",
        "mid_write",
        "random",
        "between_renames",
        "mid_write",
        "random",
        "between_renames",
        "mid_write",
        "finishing",
    ]
    fired: list[str] = []
    newest = 0  # the newest complete epoch among the checkpoints: it may never go back

    launched: list = []

    def end_leftovers() -> None:  # a failed assertion leaves no process behind
        if ref.poll() is None:
            ref.kill()
        for proc in launched:
            if proc.is_alive():
                proc.kill()
        stop_forkserver()

    request.addfinalizer(end_leftovers)

    def launch(slow: bool = True):
        """The next training process: a fork of a process that has done the imports (see
        forked_cli), so that each launch trains at once instead of importing for ~6 s."""
        env = slow_env if slow else cli_env(tmp_path)
        args = base + ["--name", "killed"]
        if (run_dir / "config.yaml").exists():
            args = ["train", "--resume", str(run_dir)]
        log = tmp_path / f"launch{len(launched)}.log"
        launched.append(forked_cli(*args, cwd=tmp_path, env=env, log=log))
        return launched[-1], log

    def moment_has_come(kind: str, proc, log: Path, seen: dict) -> bool:
        """True once the moment of ``kind`` has come for this process."""
        if kind == "before_checkpoint":
            return (run_dir / "config.yaml").exists() and not (ck / "last.pt").exists()
        mine = f".tmp-{proc.pid}"  # this process's partial files (others may be left over)
        if kind == "mid_write":
            return ck.is_dir() and any(p.name.endswith(mine) for p in ck.iterdir())
        if kind == "between_renames":  # last.pt renamed to last.prev.pt, .next not yet in place
            if (ck / f"..last.pt.next{mine}").exists():
                seen["writing"] = True
            return "writing" in seen and not (ck / "last.pt").exists()
        if "t" not in seen:
            text = log.read_text()
            if kind == "random" and (" train / " in text):  # the epochs have begun
                seen["t"] = time.monotonic()
            if kind == "finishing" and (run_dir / "model.safetensors").exists():
                seen["t"] = time.monotonic()  # the last epoch is saved; outputs being written
        return "t" in seen and time.monotonic() - seen["t"] > delay

    for kind in plan:
        delay = rng.uniform(0.0, 2.5) if kind == "random" else rng.uniform(0.0, 0.3)
        proc, log = launch()
        started, seen, hit = time.monotonic(), {}, False
        while proc.is_alive() and time.monotonic() - started < 120:
            if moment_has_come(kind, proc, log, seen):
                proc.kill()  # SIGKILL
                hit = True
                break
            time.sleep(0.005)
        proc.join(timeout=60)
        if not hit:  # it finished before the moment came: nothing left to kill
            assert proc.exitcode == 0, log.read_text()[-3000:]
            break
        assert proc.exitcode == -signal.SIGKILL, log.read_text()[-3000:]
        fired.append(kind)
        if kind == "mid_write":  # a partial file was left: it must never be taken
            assert any(p.name.endswith(f".tmp-{proc.pid}") for p in ck.iterdir())
        if kind == "between_renames":
            assert not (ck / "last.pt").exists() and (ck / ".last.pt.next").exists()
        # every checkpoint under its final name is whole; the newest epoch never goes back
        epochs_seen = []
        for name in ("last.pt", ".last.pt.next", "last.prev.pt", "best.pt"):
            if (ck / name).exists():
                state = load_checkpoint(ck / name)
                assert all_finite(state["model"])
                if name != "best.pt":
                    epochs_seen.append(int(state["epoch"]))
        print(f"killed ({kind}) after {time.monotonic() - started:.1f}s: epochs {epochs_seen}")
        if epochs_seen:
            assert max(epochs_seen) >= newest, (kind, epochs_seen, newest)
            newest = max(epochs_seen)
        if (run_dir / "metrics.csv").exists():
            rows = read_metrics(run_dir / "metrics.csv")
            assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))

    assert set(fired) == set(plan) and len(fired) >= 8, fired  # every kind of moment was hit
    proc, log = launch(slow=False)  # the last one: no kill to make room for
    proc.join(timeout=300)
    assert proc.exitcode == 0, log.read_text()[-3000:]
    _, ref_err = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_err

    # finished, every epoch once, and exactly what the uninterrupted run computed
    assert metric_rows(run_dir) == metric_rows(ref_dir)
    assert [r["epoch"] for r in read_metrics(run_dir / "metrics.csv")] == list(range(1, epochs + 1))
    got, want = load_checkpoint(ck / "last.pt"), load_checkpoint(ref_dir / "checkpoints/last.pt")
    assert_same_tensors(got["model"], want["model"], "model")
    assert_same_tensors(got["optimizer"], want["optimizer"], "optimizer")
    assert [{k: r[k] for k in EXACT_COLUMNS} for r in got["metrics"]] == [
        {k: r[k] for k in EXACT_COLUMNS} for r in want["metrics"]
    ]
    assert_same_tensors(
        read_safetensors(run_dir / "model.safetensors"),
        read_safetensors(ref_dir / "model.safetensors"),
        "model.safetensors",
    )
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["result"]["epochs"] == epochs
    assert (run_dir / "report.html").is_file()
    # no partial file is left behind to be mistaken for anything
    assert leftover_temp_files(ck) == [] and leftover_temp_files(run_dir) == []
