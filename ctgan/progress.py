"""Progress of a long loop: tqdm on a terminal, log lines everywhere else.

A pipeline stage runs in a papermill kernel whose output goes to a log (``make repro``, CI):
tqdm's carriage-return updates arrive there as one line, written when the loop ends, so an hour
of training shows nothing. Where stderr is not a terminal, :class:`LogProgress` logs one line
every ``percent_step`` percent or every ``seconds`` seconds, whichever comes first, with the
iteration, the latest values given to ``set_postfix`` (the losses), the time spent and the time
left (from the mean time per iteration so far), e.g.::

    3d-B scale 2/2: iteration 45/90 (50%), d=0.231 psnr=24.10, 1 min 10 s elapsed, about 1 min 10 s left
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

T = TypeVar("T")

PERCENT_STEP = 10
SECONDS = 60.0


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class LogProgress:
    """Iterate ``iterable`` and log a progress line now and then (see the module docstring)."""

    def __init__(
        self,
        iterable: Iterable[T],
        desc: str,
        total: int | None = None,
        *,
        percent_step: float = PERCENT_STEP,
        seconds: float = SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.iterable = iterable
        self.desc = desc
        self.total = total if total is not None else len(iterable)  # type: ignore[arg-type]
        self.percent_step = percent_step
        self.seconds = seconds
        self.clock = clock
        self.postfix = ""
        self.count = 0
        self.started = 0.0
        self.last_time = 0.0
        self.last_percent = -1.0
        self.closed = False

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{key}={value}" for key, value in values.items())

    def __iter__(self) -> Iterator[T]:
        self.started = self.last_time = self.clock()
        for item in self.iterable:
            yield item
            self.count += 1
            self._maybe_log()
        self.close()

    def _maybe_log(self) -> None:
        now = self.clock()
        percent = 100.0 * self.count / max(self.total, 1)
        first = self.count == 1
        due_percent = percent >= self.last_percent + self.percent_step
        due_time = now - self.last_time >= self.seconds
        if not (first or due_percent or due_time or self.count == self.total):
            return
        if due_percent:
            self.last_percent = percent - percent % self.percent_step
        self.last_time = now
        elapsed = now - self.started
        values = f", {self.postfix}" if self.postfix else ""
        if self.count >= self.total:
            tail = f"done in {format_duration(elapsed)}"
        else:
            left = elapsed / self.count * (self.total - self.count)
            tail = f"{format_duration(elapsed)} elapsed, about {format_duration(left)} left"
        logger.info(
            "%s: iteration %d/%d (%d%%)%s, %s",
            self.desc,
            self.count,
            self.total,
            int(percent),
            values,
            tail,
        )

    def close(self) -> None:
        self.closed = True


def on_terminal() -> bool:
    """Whether stderr (where tqdm draws) is a terminal."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable[T], desc: str, **tqdm_options: Any) -> Any:
    """tqdm on a terminal, :class:`LogProgress` elsewhere (a notebook run by papermill, a log)."""
    if on_terminal():
        return tqdm(iterable, desc=desc, **tqdm_options)
    if tqdm_options.get("disable"):
        return tqdm(iterable, desc=desc, disable=True)
    return LogProgress(iterable, desc)
