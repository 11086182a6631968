"""Progress bars for long work, on a terminal or in a log.

Every long loop of the core library uses :class:`tqdm` from here (a drop-in subclass of ``tqdm.auto.tqdm``).
Outside :func:`report_progress` it is plain tqdm. Inside it, every bar — even one its caller created with
``disable=True`` (flows run the core with ``progress=False`` so nothing draws on a shared terminal) — is
turned into text lines handed to a callback: what is done, the elapsed time and the estimated time left, e.g.
``DataElixir candidates: 512/2580 img (20 %), elapsed 01:12, ETA 04:51, 7.1 img/s``. Lines are throttled to
one per ``interval`` seconds across all bars, plus each bar's last line when the bar ran that long, so a
Prefect log (where the task layer sends them) stays readable.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tqdm.auto import tqdm as _auto_tqdm

__all__ = ["tqdm", "report_progress", "reporting", "ProgressSink"]

_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f} %), elapsed {elapsed}, ETA {remaining}, {rate_fmt}"
_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit}, elapsed {elapsed}, {rate_fmt}"


@dataclass
class ProgressSink:
    """Where the lines of every bar opened inside :func:`report_progress` go."""

    emit: Callable[[str], None]
    interval: float = 10.0
    _last: float = field(default=float("-inf"), repr=False)

    _epochs_started: float | None = field(default=None, repr=False)

    def offer(self, line: str, final: bool, bar_seconds: float) -> bool:
        """Emit ``line`` unless throttled; True when it was emitted."""
        now = time.monotonic()
        line = self._with_training_eta(line, now)
        if now - self._last >= self.interval or (final and bar_seconds >= self.interval):
            self._last = now
            self.emit(line)
            return True
        return False

    def _with_training_eta(self, line: str, now: float) -> str:
        """Training loops draw one bar per epoch (``epoch k/K: n/t``), whose own ETA is the epoch's: add the
        estimate for the whole training, from the time the first epoch started."""
        match = _EPOCH.match(line)
        if match is None:
            return line
        k, epochs, n, total = (int(match[g]) for g in ("k", "epochs", "n", "total"))
        if k == 1 and n == 0 or self._epochs_started is None:
            self._epochs_started = now
        done = (k - 1 + (n / total if total else 0)) / max(epochs, 1)
        if done <= 0:
            return line
        remaining = (now - self._epochs_started) * (1 - done) / done
        return f"{line}; all {epochs} epochs: ETA {_clock(remaining)}"


_EPOCH = re.compile(r"^.*?epoch (?P<k>\d+)/(?P<epochs>\d+): (?P<n>\d+)/(?P<total>\d+)")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60:02d}:{seconds % 60:02d}"


_SINK: contextvars.ContextVar[ProgressSink | None] = contextvars.ContextVar("detoxops_progress_sink", default=None)


class _SinkStream(io.TextIOBase):
    """The file a bar writes to inside :func:`report_progress`: tqdm writes ``\\r<status>`` on every refresh and
    a newline when the bar closes."""

    def __init__(self, sink: ProgressSink) -> None:
        self.sink = sink
        self.started = time.monotonic()
        self.current, self.current_emitted = "", True

    def write(self, text: str) -> int:
        for part in text.replace("\n", "\r\n").split("\r"):
            if part.startswith("\n"):  # the bar closed: its last line counts as final
                if self.current and not self.current_emitted:
                    self.sink.offer(self.current, True, time.monotonic() - self.started)
                self.current, self.current_emitted = "", True
                part = part[1:]
            if part.strip():
                self.current = part.strip()
                self.current_emitted = self.sink.offer(self.current, False, time.monotonic() - self.started)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class tqdm(_auto_tqdm):  # noqa: N801 - drop-in for tqdm's own name
    """``tqdm.auto.tqdm``, reporting to the active :func:`report_progress` sink when there is one."""

    def __init__(self, *args, **kwargs) -> None:
        sink = _SINK.get()
        if sink is not None:
            iterable = args[0] if args else kwargs.get("iterable")
            total = kwargs.get("total")
            if total is None and iterable is not None and hasattr(iterable, "__len__"):
                total = len(iterable)
            kwargs.update(
                disable=False, file=_SinkStream(sink), mininterval=min(sink.interval, 1.0), leave=True,
                dynamic_ncols=False, ncols=None, position=None,
                bar_format=_FORMAT if total else _FORMAT_NO_TOTAL,
            )
        super().__init__(*args, **kwargs)


@contextlib.contextmanager
def report_progress(emit: Callable[[str], None], interval: float = 10.0) -> Iterator[ProgressSink]:
    """Inside the block (this thread / task context), every :class:`tqdm` bar reports to ``emit`` as text lines
    with the elapsed time and an ETA, at most one line per ``interval`` seconds plus each long bar's last line."""
    sink = ProgressSink(emit, interval)
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


def reporting() -> bool:
    """Whether bars opened here go to a :func:`report_progress` sink."""
    return _SINK.get() is not None
