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
