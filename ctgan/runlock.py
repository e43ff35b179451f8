"""One trainer per run folder, and no training left running when DVC is gone.

Killing ``dvc repro`` (SIGKILL, a closed terminal) leaves papermill and its kernel running,
reparented to PID 1; a rerun then started a second trainer in the same ``models/.partial`` folder
and the two interleaved their history rows. Two guards:

- :class:`RunFolderLock`: an exclusive ``fcntl.flock`` on a lock file beside the run folders of one
  setting and seed (``models/.partial/.<setting>-seed<k>.lock``), held for the whole training and
  the move of the result into place. A second trainer refuses at once, naming the PID that holds
  the lock (written into the file). The kernel releases a flock when its holder dies, however it
  dies, so a killed trainer never leaves a stale lock.
- :class:`AncestorWatch`: the chain of processes from the trainer up to the ``dvc`` process that
  started it (kernel -> papermill -> dvc), with each one's parent PID. ``check`` (called at every
  logged iteration, at most every ``min_interval_s``) raises :class:`TrainingOrphaned` when one of
  them is gone or was reparented: the checkpoint of the last finished scale stays, and the next
  ``dvc repro`` resumes from it. Without a ``dvc`` process above (a notebook in JupyterLab,
  ``nohup``), nothing is watched: only a pipeline run stops with its parent.

Linux only for the watch (it reads ``/proc``); elsewhere it watches nothing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)


class RunFolderBusy(RuntimeError):
    """Another process trains in the same run folder."""


class TrainingOrphaned(RuntimeError):
    """The process that started this training (dvc) is gone."""


class RunFolderLock:
    """``with RunFolderLock(lock_path, what):`` holds an exclusive lock or raises
    :class:`RunFolderBusy` naming the PID holding it."""

    def __init__(self, lock_path: str | Path, what: str) -> None:
        self.path = Path(lock_path)
        self.what = what
        self.handle: int | None = None

    def __enter__(self) -> RunFolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(handle)
            pid = holder.split(",")[0].strip()
            raise RunFolderBusy(
                f"another training of {self.what} is running in {self.path.parent} (PID "
                f"{holder}); wait for it to end or stop it (kill {pid}), then rerun"
            ) from None
        os.ftruncate(handle, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(handle, f"{os.getpid()}, started {started}\n".encode(), 0)
        self.handle = handle
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.handle is not None:
            os.ftruncate(self.handle, 0)
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            os.close(self.handle)
            self.handle = None


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(command name, parent PID, state) of ``pid`` from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return name, int(fields[1]), fields[0]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _is_dvc(pid: int) -> bool:
    return any(Path(arg).name == "dvc" for arg in _cmdline(pid)[:2])


class AncestorWatch:
    """Processes ``(pid, parent pid, name)`` that must stay alive and keep their parent."""

    def __init__(self, chain: list[tuple[int, int, str]]) -> None:
        self.chain = chain
        self.last_check = 0.0

    @classmethod
    def for_pipeline(cls, max_depth: int = 8) -> AncestorWatch:
        """The chain from this process's parent up to the nearest ``dvc`` process; empty (nothing
        watched) when there is none within ``max_depth`` levels or /proc is not available."""
        return cls._chain_up_to(_is_dvc, "dvc", max_depth)

    @classmethod
    def up_to(cls, ancestor: int, max_depth: int = 8) -> AncestorWatch:
        """The chain from this process's parent up to process ``ancestor`` (e.g. the ``ctgan
        study`` that started a local worker); empty when it is not an ancestor within reach."""
        return cls._chain_up_to(lambda pid: pid == ancestor, None, max_depth)

    @classmethod
    def _chain_up_to(
        cls, is_top: Callable[[int], bool], top_name: str | None, max_depth: int
    ) -> AncestorWatch:
        """Walk up from this process's parent to the first process ``is_top`` accepts (named
        ``top_name`` in the chain when given); empty when none is found within ``max_depth``."""
        chain: list[tuple[int, int, str]] = []
        pid = os.getppid()
        for _ in range(max_depth):
            stat = _stat(pid)
            if stat is None or pid <= 1:
                return cls([])
            name, parent, _state = stat
            top = is_top(pid)
            chain.append((pid, parent, top_name if top and top_name else name))
            if top:
                return cls(chain)
            pid = parent
        return cls([])

    def describe(self) -> str:
        if not self.chain:
            return "no dvc process above this one: not watched"
        return "watching " + " <- ".join(f"{name} (PID {pid})" for pid, _, name in self.chain)

    def check(self, min_interval_s: float = 2.0) -> None:
        """Raise :class:`TrainingOrphaned` if a watched process is gone or was reparented."""
        now = time.monotonic()
        if not self.chain or now - self.last_check < min_interval_s:
            return
        self.last_check = now
        for pid, parent, name in self.chain:
            stat = _stat(pid)
            if stat is None or stat[2] in ("Z", "X") or stat[1] != parent:
                raise TrainingOrphaned(
                    f"{name} (PID {pid}), which started this training, is gone; stopping so that "
                    f"no second trainer meets this one. The checkpoint of the last finished scale "
                    f"is kept: rerun `dvc repro` to resume from it"
                )
