"""detoxops.progress: bars become throttled log lines with the elapsed time and an ETA inside report_progress (what
the flows log), plain tqdm outside; tasks.progress routes them and the core's log records to the run log."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from detoxops.progress import report_progress, reporting, tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def test_bars_report_lines_with_eta_even_when_disabled():
    lines: list[str] = []
    with report_progress(lines.append, interval=0.05):
        assert reporting()
        for _ in tqdm(range(8), desc="DataElixir candidates", unit="img", disable=True):
            time.sleep(0.02)
    assert not reporting()
    assert lines[0].startswith("DataElixir candidates: 0/8 img (0 %)")
    assert lines[-1].startswith("DataElixir candidates: 8/8 img (100 %)")
    assert all("elapsed" in line and "ETA" in line for line in lines)
    assert 2 <= len(lines) <= 9


def test_lines_are_throttled_across_bars_and_long_bars_end_with_their_last_line():
    lines: list[str] = []
    with report_progress(lines.append, interval=10.0):
        for epoch in range(20):  # many short bars (a victim's epochs): one line, not 40
            for _ in tqdm(range(3), desc=f"epoch {epoch + 1}/20", disable=True):
                pass
    assert lines == [lines[0]] and lines[0].startswith("epoch 1/20: 0/3")
    lines.clear()
    with report_progress(lines.append, interval=0.1):
        bar = tqdm(total=4, desc="long", disable=True)
        for _ in range(4):
            time.sleep(0.06)
            bar.update(1)
        bar.close()
    assert lines[-1].startswith("long: 4/4")


def test_outside_a_sink_tqdm_is_plain(capsys):
    for _ in tqdm(range(3), desc="plain", disable=True):
        pass
    assert capsys.readouterr().err == ""


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_task_progress_sends_bars_and_core_records_to_the_run_log():
    import tasks.progress as tp

    tp._run_logger()  # imports prefect (its logging config resets handlers) before ours is attached
    kept = _Keep()
    log = logging.getLogger(tp.FALLBACK_LOGGER)  # outside a Prefect run; inside one, the run logger
    log.addHandler(kept)
    log.setLevel(logging.INFO)
    timings: dict[str, float] = {}
    try:
        with tp.stage_progress("dataelixir", timings, interval=0.01):
            for _ in tqdm(range(3), desc="DataElixir candidates", unit="img", disable=True):
                time.sleep(0.02)
            logging.getLogger("detoxops.defenses.dataelixir").warning("shard-00001.npz: damaged shard; recomputing")
            with tp.task_progress("inner"):  # a task inside a stage: the stage's sink keeps the lines
                for _ in tqdm(range(2), desc="inner bar", disable=True):
                    time.sleep(0.02)
    finally:
        log.removeHandler(kept)
    messages = kept.messages
    assert messages[0] == "dataelixir: started" and messages[-1].startswith("dataelixir: finished in 0:0")
    assert any(m.startswith("dataelixir | DataElixir candidates: 3/3 img (100 %)") and "ETA" in m for m in messages)
    assert any(m.startswith("dataelixir | inner bar:") for m in messages)
    assert "shard-00001.npz: damaged shard; recomputing" in messages
    assert set(timings) == {"dataelixir"} and timings["dataelixir"] >= 0.06
    assert "total" in tp.format_timings({"ingest": 1.0, "dataelixir": 65.0})


def test_training_loops_get_an_eta_for_all_epochs():
    """A loop with one bar per epoch: each line also carries the estimate for the whole training."""
    from detoxops.progress import ProgressSink

    sink = ProgressSink(lambda line: None)
    assert sink._with_training_eta("epoch 1/4: 0/10 it (0 %), elapsed 00:00, ETA ?", now=100.0).endswith("ETA ?")
    line = sink._with_training_eta("epoch 2/4: 5/10 it (50 %), elapsed 00:05, ETA 00:05", now=130.0)
    assert line.endswith("; all 4 epochs: ETA 00:50")  # 1.5 of 4 epochs in 30 s: 2.5 left, 50 s
    assert sink._with_training_eta("DataElixir candidates: 5/10 img", now=131.0) == "DataElixir candidates: 5/10 img"
