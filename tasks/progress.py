"""Progress of long flow stages in the Prefect log (and so on the CLI that runs the flow).

``with stage_progress("dataelixir", timings):`` around a task call sends every progress bar the core library opens
inside it (``detoxops.progress``) to the flow run's log as throttled lines with the elapsed time and an ETA, forwards
the core library's own log records (``detoxops.*``: a damaged shard recomputed, images resized) to the same log, and
records how long the stage took in ``timings`` — what the check's summary prints.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

__all__ = ["stage_progress", "task_progress", "format_timings", "PROGRESS_INTERVAL_S"]

PROGRESS_INTERVAL_S = 10.0
FALLBACK_LOGGER = "tasks.progress"
"""Where lines go outside a Prefect run (not below ``detoxops``, whose records are forwarded)."""


class _Forward(logging.Handler):
    def __init__(self, target: logging.Logger | logging.LoggerAdapter) -> None:
        super().__init__(logging.INFO)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self, "_busy", False):  # a target that logs back into "detoxops": never loop
            return
        self._busy = True
        try:
            self.target.log(record.levelno, record.getMessage())
        finally:
            self._busy = False


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger  # importing prefect configures logging: before the fallback is used

    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a flow / task run: the plain logger
        fallback = logging.getLogger(FALLBACK_LOGGER)
        fallback.disabled = False  # prefect's logging config disables loggers that existed before it
        return fallback


@contextlib.contextmanager
def _forwarding() -> Iterator[logging.Logger | logging.LoggerAdapter]:
    """The run's logger, with the core library's ``detoxops.*`` records (INFO and up) forwarded to it meanwhile."""
    logger = _run_logger()
    core = logging.getLogger("detoxops")
    handler = _Forward(logger)
    old_level = core.level
    core.addHandler(handler)
    if core.getEffectiveLevel() > logging.INFO:
        core.setLevel(logging.INFO)
    try:
        yield logger
    finally:
        core.removeHandler(handler)
        core.setLevel(old_level)


@contextlib.contextmanager
def stage_progress(name: str, timings: dict[str, float] | None = None,
                   interval: float | None = None) -> Iterator[None]:
    """Report the progress of the stage ``name`` to the run log (a line per ``interval`` seconds, default
    :data:`PROGRESS_INTERVAL_S`); store its duration in ``timings[name]``."""
    from detoxops.progress import report_progress

    interval = PROGRESS_INTERVAL_S if interval is None else interval
    with _forwarding() as logger:
        started = time.perf_counter()
        logger.info("%s: started", name)
        try:
            with report_progress(lambda line: logger.info("%s | %s", name, line), interval=interval):
                yield
        finally:
            seconds = time.perf_counter() - started
            if timings is not None:
                timings[name] = round(seconds, 1)
            logger.info("%s: finished in %s", name, _hms(seconds))


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def format_timings(timings: dict[str, float]) -> str:
    """``stage  m:ss`` lines and the total, for the check's summary."""
    width = max([len("total"), *(len(k) for k in timings)])
    lines = [f"  {name:<{width}}  {_hms(s):>7}  ({s:.1f} s)" for name, s in timings.items()]
    lines.append(f"  {'total':<{width}}  {_hms(sum(timings.values())):>7}")
    return "\n".join(lines)


@contextlib.contextmanager
def task_progress(label: str, interval: float | None = None) -> Iterator[None]:
    """Inside a task body: its progress bars go to the run log as lines with an ETA (and ``detoxops.*`` log records
    with them), whichever flow calls it. Does nothing when a flow already routes them (:func:`stage_progress`)."""
    from detoxops.progress import report_progress, reporting

    if reporting():
        yield
        return
    with _forwarding() as logger, report_progress(lambda line: logger.info("%s | %s", label, line),
                                                  interval=PROGRESS_INTERVAL_S if interval is None else interval):
        yield
