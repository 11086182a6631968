"""atomic_dir cleans the temp folders of killed writes on the next write, never a live writer's (issue #23)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from detoxops.fileio import STALE_TEMP_SECONDS, atomic_dir


def _writer(dest) -> subprocess.Popen:
    """A child that starts an atomic write of ``dest``, writes a file, then sleeps (to be killed) or holds."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from detoxops.fileio import atomic_dir
        with atomic_dir({str(dest)!r}) as tmp:
            (tmp / "part.bin").write_bytes(bytes(1000))
            print(tmp, flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    proc.tmp_line = proc.stdout.readline().strip()  # type: ignore[attr-defined]
    return proc


def test_killed_write_is_cleaned_live_write_is_not(tmp_path):
    root = tmp_path / "versions"
    killed = _writer(root / "aaa")
    live = _writer(root / "bbb")
    try:
        killed_tmp, live_tmp = killed.tmp_line, live.tmp_line
        assert os.path.isdir(killed_tmp) and os.path.isdir(live_tmp)
        killed.send_signal(signal.SIGKILL)  # as the probe's killed `data ingest`
        killed.wait(10)
        assert os.path.isdir(killed_tmp)  # a killed process cannot clean up after itself
        with atomic_dir(root / "ccc") as tmp:  # the next write, of another version in the same folder
            (tmp / "x").write_text("ok")
        assert not os.path.exists(killed_tmp), "stale temp folder of a killed write left behind"
        assert os.path.isdir(live_tmp), "a live concurrent write's temp folder was removed"
        assert (root / "ccc" / "x").read_text() == "ok"
    finally:
        for proc in (killed, live):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_old_style_temp_folders_are_judged_by_age(tmp_path):
    old = tmp_path / f"abc123.tmp-{uuid.uuid4().hex}"
    fresh = tmp_path / f"def456.tmp-{uuid.uuid4().hex}"
    unrelated = tmp_path / "abc123.tmp-notatemp"
    for folder in (old, fresh, unrelated):
        folder.mkdir()
        (folder / "data.npy").write_bytes(bytes(10))
    past = time.time() - STALE_TEMP_SECONDS - 60
    for path in (old / "data.npy", old):
        os.utime(path, (past, past))
    with atomic_dir(tmp_path / "new") as tmp:
        (tmp / "f").write_text("1")
    assert not old.exists() and fresh.exists() and unrelated.exists()


def test_atomic_write_text_replaces_whole_or_not_at_all(tmp_path):
    from detoxops.fileio import atomic_write_text

    dest = tmp_path / "deep" / "result.json"
    atomic_write_text(dest, '{"a": 1}')
    atomic_write_text(dest, '{"a": 2}')
    assert dest.read_text() == '{"a": 2}'
    with pytest.raises(TypeError):
        atomic_write_text(dest, None)  # type: ignore[arg-type]  # the write itself fails
    assert dest.read_text() == '{"a": 2}' and sorted(p.name for p in dest.parent.iterdir()) == ["result.json"]
