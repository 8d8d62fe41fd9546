"""Training on several processes and machines with PyTorch's own engine: torchrun and DDP.

Nothing here is home-made: processes are started by torchrun's elastic launcher
(``torch.distributed.run``), they meet through its rendezvous, gradients are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel`, and every reduction is a
``torch.distributed`` collective (gloo on the CPU, NCCL on CUDA with one GPU per process).

- :func:`session` / :func:`setup` read torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ...) and join the process group; without that
  environment they return a single-process :class:`DistContext` whose collectives do
  nothing, so the training loop has one code path.
- :func:`launch` is ``alexnet train --nproc N``: it re-runs the same command as
  ``torchrun --standalone --nproc-per-node N -m alexnet train ...`` (or multi-node with
  ``--nnodes``, ``--node-rank``, ``--rdzv-endpoint``).

A failing rank exits non-zero at once (its exception is recorded in torchrun's error file,
so the launcher's summary names it); torchrun's agent then stops the other ranks. Every
collective also has a bounded timeout (:data:`ENV_TIMEOUT`), so a rank stuck without
exiting cannot make the others wait forever.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from alexnet.errors import UserError
from alexnet.io.digest import state_digest  # re-exported: checks that ranks agree
from alexnet.runtime import pick_device

__all__ = [
    "DistContext",
    "ENV_FAULT_RANK",
    "ENV_TIMEOUT",
    "fault_point",
    "launch",
    "launched_by_torchrun",
    "session",
    "setup",
    "state_digest",
    "strip_launcher_flags",
    "teardown",
    "torchrun_args",
]

# Seconds a collective may wait for the other ranks before it fails (default per backend).
# Long enough for rank 0 to write a checkpoint while the others wait, short enough that a
# stuck job ends instead of hanging.
ENV_TIMEOUT = "ALEXNET_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = {"gloo": 120.0, "nccl": 600.0}
# Waiting for the first process of a node to prepare (download, decode and cache) a dataset.
PREPARE_TIMEOUT = datetime.timedelta(hours=2)

# Set by `launch` in the workers it starts: their command line may still hold launcher flags.
ENV_LAUNCHER = "ALEXNET_LAUNCHER"

# Test hook (the only one): ALEXNET_FAULT_RANK=R makes rank R raise at the start of its first
# training epoch, to check that one failing rank ends the whole job. See `fault_point`.
ENV_FAULT_RANK = "ALEXNET_FAULT_RANK"

# Flags of `alexnet train` that belong to the launcher, with whether they take a value.
LAUNCHER_FLAGS = {"--nproc": True, "--nnodes": True, "--node-rank": True, "--rdzv-endpoint": True}


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or anything that sets its variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise UserError(f"{name} is not set; start distributed training with torchrun")
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r} is not a number; start with torchrun") from None


class DistContext:
    """This process's place in the job, and the collectives the training loop uses.

    Rank 0 is the main process (it prints and writes files). With ``world_size`` 1 every
    collective returns its input unchanged, so single-process code needs no branches.
    ``all_reduce`` is the name :mod:`alexnet.training.engine` expects for a summing reduction.
    """

    def __init__(
        self,
        *,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        local_world_size: int = 1,
        device: torch.device | str = "cpu",
        backend: str | None = None,
        timeout: datetime.timedelta | None = None,
        owns_group: bool = False,
    ):
        self.rank, self.world_size = rank, world_size
        self.local_rank, self.local_world_size = local_rank, local_world_size
        self.device = torch.device(device)
        self.backend = backend
        self.timeout = timeout
        self.owns_group = owns_group
        self._prepare_group: Any = None

    def __repr__(self) -> str:
        return (
            f"DistContext(rank={self.rank}, world_size={self.world_size}, "
            f"local_rank={self.local_rank}, device={self.device}, backend={self.backend})"
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    # -- collectives (no-ops in a single process)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over all ranks, in place; returns ``t``. It must be on :attr:`device`."""
        if self.is_distributed:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    all_reduce = all_reduce_sum

    def barrier(self) -> None:
        if self.is_distributed:
            torch.distributed.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` as rank ``src`` has it (any picklable value), on every rank."""
        if not self.is_distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src, device=self._object_device())
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def _object_device(self) -> torch.device | None:
        return self.device if self.backend == "nccl" else None

    def broadcast_module(self, module: nn.Module, *, buffers_only: bool = False, src: int = 0):
        """Copy rank ``src``'s parameters and buffers (or buffers only) into every rank's
        ``module``, in place. Used to share the best weights rank 0 loaded, and BatchNorm
        running statistics, which DDP leaves as each rank's last local update."""
        if not self.is_distributed:
            return
        tensors = (
            list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
        )
        with torch.no_grad():
            for t in tensors:
                if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
                    torch.distributed.broadcast(t.data, src=src)
                else:  # a layout c10d does not take: go through a dense copy
                    tmp = t.data.contiguous()
                    torch.distributed.broadcast(tmp, src=src)
                    t.data.copy_(tmp)

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's BatchNorm running statistics on every rank (what rank 0 checkpoints)."""
        self.broadcast_module(module, buffers_only=True)

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the body on each node's first process, then on the others.

        For work that fills a shared cache or downloads a dataset: the others then find it
        done instead of repeating it at the same time. The wait has its own long timeout.
        """
        if not self.is_distributed:
            yield
            return
        if self._prepare_group is None:  # every rank calls this in the same order
            self._prepare_group = torch.distributed.new_group(
                backend="gloo", timeout=PREPARE_TIMEOUT
            )
        if self.local_rank != 0:
            torch.distributed.barrier(group=self._prepare_group)
        yield
        if self.local_rank == 0:
            torch.distributed.barrier(group=self._prepare_group)

    # -- the model

    def wrap_model(self, model: nn.Module, *, sync_bn: bool = False) -> nn.Module:
        """``model`` inside DistributedDataParallel (unchanged in a single process).

        The wrapper only averages gradients; checkpoints and model files take the unwrapped
        ``model`` so that a run written by N processes resumes in M. ``sync_bn`` turns
        BatchNorm layers into SyncBatchNorm (statistics over the global batch; CUDA only,
        as in PyTorch). Call again after unfreezing parameters: DDP only reduces the
        gradients of parameters that required them when it was built.
        """
        if not self.is_distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        if sync_bn:
            if self.device.type != "cuda":
                raise UserError(
                    "sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on the "
                    f"{self.device.type}); drop --sync-bn for CPU training"
                )
            if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DDP(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            gradient_as_bucket_view=True,  # (buffers: DDP's default, rank 0's before each step)
        )

    def default_threads(self) -> int | None:
        """Intra-op threads per process: the cores shared out between this node's processes
        (None in a single process: the caller's own default)."""
        if not self.is_distributed:
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
        return max(1, cores // max(1, self.local_world_size))


# ----------------------------------------------------------------------------------------
# Joining and leaving the process group


def _timeout(backend: str, seconds: float | None) -> datetime.timedelta:
    if seconds is None:
        raw = os.environ.get(ENV_TIMEOUT)
        try:
            seconds = float(raw) if raw else DEFAULT_TIMEOUT_S[backend]
        except ValueError:
            raise UserError(f"{ENV_TIMEOUT}={raw!r} is not a number of seconds") from None
    if seconds <= 0:
        raise UserError(f"the collective timeout must be positive, got {seconds} s")
    return datetime.timedelta(seconds=seconds)


def _device_for_rank(device: str, local_rank: int, local_world_size: int) -> torch.device:
    """One device per process: ``cuda:LOCAL_RANK`` when CUDA is used, else the CPU."""
    want = device.split(":")[0]
    if want not in ("auto", "cpu", "cuda"):
        raise UserError(
            f"--device {device} cannot be used for distributed training; use cuda or cpu"
        )
    if device.startswith("cuda:"):
        raise UserError(
            f"--device {device}: under torchrun each process takes cuda:LOCAL_RANK; "
            "pass --device cuda (choose GPUs with CUDA_VISIBLE_DEVICES)"
        )
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(
            f"{local_world_size} processes on this machine but only {count} GPU(s) visible; "
            f"use --nproc {count} (one process per GPU)"
        )
    return torch.device("cuda", local_rank)


def setup(device: str = "auto", *, timeout: float | None = None) -> DistContext:
    """This process's :class:`DistContext`: joins torchrun's group when launched by it.

    ``device`` is the run's ``--device`` (``auto``, ``cpu``, ``cuda``): CUDA ranks use
    ``cuda:LOCAL_RANK`` and NCCL, CPU ranks gloo. ``timeout`` (seconds) bounds every
    collective; default ``$ALEXNET_DIST_TIMEOUT`` or 120 s (gloo) / 600 s (NCCL). Without
    torchrun's variables, or with ``WORLD_SIZE=1``, the result is a single process on
    :func:`alexnet.runtime.pick_device` ``(device)``.
    """
    if not launched_by_torchrun() or _env_int("WORLD_SIZE") <= 1:
        return DistContext(device=pick_device(device))
    if not torch.distributed.is_available():
        raise UserError("this PyTorch build has no torch.distributed; install a standard build")
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", 1)
    dev = _device_for_rank(device, local_rank, local_world)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if torch.distributed.is_initialized():  # the caller's own group: use it, leave it open
        return DistContext(
            rank=torch.distributed.get_rank(),
            world_size=torch.distributed.get_world_size(),
            local_rank=local_rank,
            local_world_size=local_world,
            device=dev,
            backend=torch.distributed.get_backend(),
        )
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise UserError(f"{name} is not set; start distributed training with torchrun")
    limit = _timeout(backend, timeout)
    _import_group_defaults()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.distributed.init_process_group(
            backend, init_method="env://", timeout=limit, device_id=dev
        )
    else:
        torch.distributed.init_process_group(backend, init_method="env://", timeout=limit)
    return DistContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        local_world_size=local_world,
        device=dev,
        backend=backend,
        timeout=limit,
        owns_group=True,
    )


def _import_group_defaults() -> None:
    """Import ``torch.distributed.nn`` while no process group exists.

    Its functions take ``group=group.WORLD`` as a default argument, evaluated once, at
    import. Imported after ``init_process_group`` (DistributedDataParallel imports it,
    through torch._dynamo) those defaults hold the world group for the rest of the process:
    ``destroy_process_group`` then cannot free it, and its gloo worker threads run on into
    interpreter shutdown. A worker still releasing the tensors of the last collective
    there needs the GIL, is ended by the finalizing interpreter, and C++ aborts the process
    ("terminate called without an active exception"). Imported first, the defaults are
    None (the default group, looked up at call time) and hold nothing.
    """
    try:
        import torch.distributed.nn  # noqa: F401
    except ImportError:  # a build without it: then nothing holds the group either
        pass


def teardown(ctx: DistContext, *, clean: bool = True) -> None:
    """Leave the process group ``setup`` joined, and free its groups.

    The groups' worker threads stop when the last reference to a group goes, so before
    destroying: drop :meth:`DistContext.main_first`'s group and collect the garbage cycles
    that still hold a DDP wrapper (its reducer holds the group) or a DataLoader (its
    persistent workers). Every thread of the group is then joined here, while the
    interpreter runs, instead of racing its shutdown (see :func:`_import_group_defaults`).
    A module still referenced by the caller keeps its group until the caller drops it.
    After a failure an NCCL group is left to the process exit: destroying it with
    collectives in flight can block.
    """
    if not ctx.owns_group or not torch.distributed.is_initialized():
        return
    ctx._prepare_group = None
    if clean or ctx.backend == "gloo":
        gc.collect()
        torch.distributed.destroy_process_group()
    ctx.owns_group = False


def _record_failure(exc: BaseException) -> None:
    """Write ``exc`` to torchrun's per-worker error file, so the launcher's summary shows
    this rank's message as the root cause (nothing happens outside torchrun)."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    try:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(exc)
    except Exception:  # reporting must never hide the original error
        pass


@contextlib.contextmanager
def session(device: str = "auto", *, timeout: float | None = None) -> Iterator[DistContext]:
    """``with session(cfg.device) as dist:`` — :func:`setup`, then :func:`teardown`.

    An exception leaving the block is recorded for torchrun's failure summary and
    re-raised, so the process exits non-zero and the launcher stops the other ranks.
    """
    ctx = setup(device, timeout=timeout)
    clean = False
    try:
        yield ctx
        clean = True
    except Exception as e:
        if ctx.is_distributed:
            _record_failure(e)
        raise
    finally:
        teardown(ctx, clean=clean)


# ----------------------------------------------------------------------------------------
# Checks and the test hook


def fault_point(ctx: DistContext, epoch: int) -> None:
    """Test hook: with ``ALEXNET_FAULT_RANK=R`` rank R raises here in its first epoch.

    Called once at the start of each training epoch. It exists so the tests can check
    that one failing rank ends the whole job, promptly and with that rank's error.
    """
    target = os.environ.get(ENV_FAULT_RANK)
    if target is None or not ctx.is_distributed or target.strip() != str(ctx.rank):
        return
    if getattr(ctx, "_fault_fired", False):
        return
    ctx._fault_fired = True  # type: ignore[attr-defined]
    raise RuntimeError(f"fault injected on rank {ctx.rank} in epoch {epoch} ({ENV_FAULT_RANK})")


# ----------------------------------------------------------------------------------------
# `alexnet train --nproc N`: the same command through torchrun's launcher


def strip_launcher_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc``, ``--nnodes``, ``--node-rank``, ``--rdzv-endpoint``
    (as ``--flag VALUE`` or ``--flag=VALUE``): what each worker process runs."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCHER_FLAGS:
            skip = LAUNCHER_FLAGS[name] and "=" not in arg
            continue
        out.append(arg)
    return out


def torchrun_args(
    nproc: int,
    argv: Sequence[str],
    *,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
) -> list[str]:
    """torchrun's arguments for running ``python -m alexnet <argv>`` on ``nproc`` processes.

    One machine: ``--standalone`` (a private rendezvous on a free port). Several:
    ``--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT`` (and ``--node-rank``
    when given); run the same command on every machine.
    """
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    if nnodes < 1:
        raise UserError(f"--nnodes must be at least 1, got {nnodes}")
    args: list[str]
    if nnodes == 1 and rdzv_endpoint is None:
        args = ["--standalone", "--nnodes", "1"]
    else:
        if rdzv_endpoint is None:
            raise UserError(
                f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (a machine all nodes "
                "reach, e.g. the first node's address and port 29400)"
            )
        args = ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint]
        if node_rank is not None:
            args += ["--node-rank", str(node_rank)]
    return [*args, "--nproc-per-node", str(nproc), "-m", "alexnet", *strip_launcher_flags(argv)]


def launch(
    nproc: int,
    argv: Sequence[str],
    *,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
) -> int:
    """Run ``alexnet <argv>`` on ``nproc`` processes here through torchrun; its exit status.

    ``argv`` is the command after ``alexnet`` (``["train", "--epochs", "3", ...]``);
    launcher flags in it are dropped. When a rank fails, torchrun stops the others and this
    returns that rank's exit status (1 when it was killed by a signal) after one line
    naming it.
    """
    if launched_by_torchrun():
        raise UserError(
            "--nproc starts torchrun itself; under torchrun leave --nproc out (torchrun's "
            "--nproc-per-node sets the number of processes)"
        )
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    parser = torchrun.get_args_parser()
    args = parser.parse_args(
        torchrun_args(nproc, argv, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)
    )
    os.environ[ENV_LAUNCHER] = "1"
    try:
        torchrun.run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        message = failure.message
        if isinstance(message, dict):  # from the rank's error file
            message = message.get("message", "")
        message = str(message).strip().splitlines()[-1] if str(message).strip() else ""
        code = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1
        print(
            f"alexnet: error: rank {rank} of {nnodes * nproc if nnodes else nproc} failed "
            f"(exit status {failure.exitcode}){': ' + message if message else ''}; "
            "the other ranks were stopped",
            file=sys.stderr,
        )
        return code
    except SignalException as e:  # Ctrl-C or a scheduler's SIGTERM: the workers are stopped
        print(f"alexnet: interrupted ({e.sigval.name}); all ranks stopped", file=sys.stderr)
        return 130
    finally:
        os.environ.pop(ENV_LAUNCHER, None)
    return 0
