"""write_table: the results CSV is written atomically and per run folder (issue #23: concurrent flows.detox runs)."""

from __future__ import annotations

import csv
import threading

from tasks.report_tasks import COLUMNS, write_table


def _rows(tag: str, n: int = 200) -> list[dict]:
    return [{"attack": tag, "defense": f"d{i}", "ca": i, "pa": i, "asr": i} for i in range(n)]


def test_concurrent_runs_keep_their_own_complete_tables(tmp_path):
    out = tmp_path / "runs" / "detox" / "datahash"
    runs = [f"run{i}" for i in range(6)]
    threads = [threading.Thread(target=write_table, args=(_rows(r), out / r / "results.csv")) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in runs:
        with (out / r / "results.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 200 and {row["attack"] for row in rows} == {r}
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no temp files left


def test_rewrites_replace_whole_files(tmp_path):
    path = tmp_path / "results.csv"
    writers = [threading.Thread(target=write_table, args=(_rows(f"w{i}"), path)) for i in range(8)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    with path.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert len(rows) == 200 and len({row["attack"] for row in rows}) == 1  # one writer's table, whole
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_rows_hold_fractions_and_the_table_shows_percent(tmp_path):
    """results_table keeps the tasks' fractions; the printed table and the CSV show percent (one conversion)."""
    from tasks.report_tasks import format_table, results_table

    rows = results_table([{"defense": "none", "ca": 0.875, "pa": 0.125, "asr": 0.9, "images_per_s": 12.0}],
                         {"defense": "dataelixir (retrained)", "ca": 0.5, "asr": 0.0, "tpr": 0.75, "fpr": None},
                         "badnets")
    assert rows[0]["ca"] == 0.875 and rows[1]["tpr"] == 0.75 and rows[1]["fpr"] is None
    text = format_table(rows).splitlines()
    assert text[1].split()[:5] == ["badnets", "none", "87.5", "12.5", "90.0"] and "12.0" in text[1]  # images/s as is
    assert text[2].split()[-7:] == ["50.0", "-", "0.0", "75.0", "-", "-", "-"]  # CA PA ASR TPR FPR images/s s
    with write_table(rows, tmp_path / "results.csv").open() as f:
        stored = list(csv.DictReader(f))
    assert (stored[0]["ca"], stored[0]["asr"], stored[1]["tpr"], stored[1]["fpr"]) == ("87.5", "90.0", "75.0", "")
