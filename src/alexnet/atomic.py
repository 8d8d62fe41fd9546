"""Files that are either the old version or the new one, never half of either.

Every file a user relies on (checkpoints, model files, the decoded-image cache, exports,
plots, the report) is written the same way: into a temporary file in the target's folder
(``.NAME.tmp-PID``), flushed and fsynced, then moved over the target with ``os.replace``
(atomic on POSIX and Windows), then the folder is fsynced so the rename survives a power
cut. A kill at any instant leaves the previous file whole; the temporary files a killed
process leaves behind are removed by the next successful write of the same file.
"""

from __future__ import annotations

import contextlib
import glob
import os
import time
from collections.abc import Iterator
from pathlib import Path

from alexnet.errors import UserError, WeightsError

__all__ = ["SLOW_WRITE_ENV", "fsync_dir", "replacing", "write_atomic"]

# Test hook: seconds that every atomic write is stretched over (written in pieces, with
# pauses, and a pause between the two renames that keep last.prev.pt), so that a test can
# SIGKILL a training process in the middle of a checkpoint write. Never set it otherwise.
SLOW_WRITE_ENV = "ALEXNET_TEST_SLOW_WRITE"


def slow_write_delay() -> float:
    """The one place :data:`SLOW_WRITE_ENV` is read (0 when unset)."""
    try:
        return max(0.0, float(os.environ.get(SLOW_WRITE_ENV) or 0))
    except ValueError:
        return 0.0


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames in ``folder`` durable (a no-op where folders cannot be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(path: Path, keep_suffix: bool) -> tuple[Path, str]:
    """(this process's temporary file for ``path``, a glob for anyone's)."""
    if keep_suffix:  # for writers and readers that go by the extension (.onnx, .safetensors)
        stem, suffix = glob.escape(path.stem), glob.escape(path.suffix)
        return (
            path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}"),
            f".{stem}.tmp-*{suffix}",
        )
    return path.with_name(f".{path.name}.tmp-{os.getpid()}"), f".{glob.escape(path.name)}.tmp-*"


@contextlib.contextmanager
def replacing(
    path: str | os.PathLike,
    *,
    keep_suffix: bool = False,
    error: type[UserError] | None = WeightsError,
    shown_as: str | os.PathLike | None = None,
) -> Iterator[Path]:
    """``with replacing(path) as tmp: write(tmp)``: ``tmp`` becomes ``path`` atomically.

    When the block ends normally, ``tmp`` is fsynced and renamed onto ``path``; when it
    raises, ``tmp`` is removed and ``path`` is untouched. An ``OSError`` (full disk,
    read-only folder) is raised as ``error`` with one sentence naming ``shown_as or path``
    (``error=None``: the ``OSError`` itself). ``keep_suffix`` keeps the extension on ``tmp``.
    """
    path = Path(path)
    tmp, stale_glob = _temp_name(path, keep_suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:  # the writer may have closed it without syncing
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and error is not None:
            raise error(
                f"could not write {shown_as or path}: {e.strerror or e}; the previous file "
                "(if any) is intact"
            ) from None
        raise
    fsync_dir(path.parent)
    for stale in path.parent.glob(stale_glob):  # left by a process that was killed
        with contextlib.suppress(OSError):
            stale.unlink()


def write_atomic(
    path: str | os.PathLike,
    data: bytes,
    *,
    shown_as: str | os.PathLike | None = None,
    error: type[UserError] | None = WeightsError,
) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one.

    A full disk or an unwritable folder raises ``error`` (default :class:`WeightsError`)
    naming the file (or ``shown_as``); the previous file, if any, is left as it was.
    """
    path = Path(path)
    delay = slow_write_delay()
    with replacing(path, error=error, shown_as=shown_as) as tmp, open(tmp, "wb") as f:
        if delay:  # the test hook: four pieces, each on disk before a pause
            step = -(-len(data) // 4) or 1
            for i in range(0, len(data), step):
                f.write(data[i : i + step])
                f.flush()
                time.sleep(delay / 4)
        else:
            f.write(data)
    return path
