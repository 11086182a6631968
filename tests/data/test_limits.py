"""Resource limits for untrusted datasets (issue #23): archive bombs, pixel bombs, dataset size limits.

The bombs are built here, small on disk and large when inflated (a 600 MiB zero-filled member compresses to
~2.7 MB); the bomb ingests run in a child process whose peak resident memory is read with ``os.wait4``'s
resource accounting and must stay under 500 MB (reading the member whole would take more than 600 MB).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from detoxops.config import ConfigError, DataConfig, DataLimits, load_params
from detoxops.data import load_source
from detoxops.data.limits import InputLimitError

MiB = 2**20
BOMB_BYTES = 600 * MiB
PEAK_BOUND_MB = 500


class _Zeros(io.RawIOBase):
    """``n`` zero bytes as a stream, so a huge member is written without holding it in memory."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        k = min(len(buffer), self.left)
        buffer[:k] = bytes(k)
        self.left -= k
        return k


def _add_zeros(tar: tarfile.TarFile, name: str, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    tar.addfile(info, io.BufferedReader(_Zeros(size), MiB))


def _tar(path: Path, files: dict[str, bytes], zeros: dict[str, int] | None = None) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, size in (zeros or {}).items():  # the bomb first: everything after it is read past it
            _add_zeros(tar, name, size)
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _png_header_bomb(width: int, height: int, rows: int | None = None) -> bytes:
    """A valid grayscale PNG declaring ``width x height``: zero rows, deflated (10000² → ~100 kB)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    comp = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + zero pixels
    idat = b"".join(comp.compress(row) for _ in range(height if rows is None else rows)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _ingest_in_child(tmp_path: Path, source: Path, overrides: dict | None = None) -> tuple[dict, float]:
    """Ingest ``source`` in a fresh interpreter; (its outcome, its peak RSS in MB).

    The peak is the child's own ``VmHWM`` (the high-water mark of its address space, which starts afresh at exec),
    read by the child at the end. ``wait4``'s ``ru_maxrss`` would not do: Linux carries the *parent's* peak over
    fork + exec, so inside a 2 GB pytest process every child would report at least 2 GB."""
    code = textwrap.dedent(
        f"""
        import json, sys
        from detoxops.config import DataConfig
        from detoxops.data import ingest
        def peak_kb():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        cfg = DataConfig(root={str(tmp_path / "store")!r}, image_size=None, **{overrides or {}!r})
        try:
            path = ingest({str(source)!r}, cfg=cfg, progress=False, cache=False)
            outcome = {{"ok": str(path)}}
        except ValueError as exc:
            outcome = {{"error": str(exc), "type": type(exc).__name__}}
        print(json.dumps({{**outcome, "peak_kb": peak_kb()}}))
        """
    )
    out_path, err_path = tmp_path / "child.out", tmp_path / "child.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:  # files, not pipes: no reader needed
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err)
        _, status, _ = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, f"exit {proc.returncode}: {err_path.read_text()[-3000:]}"
    lines = out_path.read_text().strip().splitlines()
    assert lines, f"no outcome printed: {err_path.read_text()[-3000:]}"
    outcome = json.loads(lines[-1])
    peak_mb = outcome.pop("peak_kb") / 1024
    print(f"{source.name}: child peak RSS {peak_mb:.0f} MB")  # shown with pytest -s (docs/security.md)
    return outcome, peak_mb


# ------------------------------------------------------------------------------------- archive bombs
def test_skipped_giant_member_is_never_read_tar(tmp_path, mk):
    """The probe's bomb: a 600 MiB zero README in a small .tar.gz. It is skipped, never held: ingest succeeds."""
    archive = _tar(tmp_path / "bomb.tar.gz", mk.tree_files(), zeros={"README.txt": BOMB_BYTES})
    assert archive.stat().st_size < 5 * MiB
    outcome, peak_mb = _ingest_in_child(tmp_path, archive)
    assert "ok" in outcome, outcome
    assert peak_mb < PEAK_BOUND_MB, f"peak RSS {peak_mb:.0f} MB"


def test_skipped_giant_member_is_never_read_zip(tmp_path, mk):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("README.txt", "w", force_zip64=True) as fh:
            chunk = bytes(MiB)
            for _ in range(BOMB_BYTES // MiB):
                fh.write(chunk)
        for rel, data in mk.tree_files().items():
            zf.writestr(rel, data)
    assert archive.stat().st_size < 5 * MiB
    outcome, peak_mb = _ingest_in_child(tmp_path, archive)
    assert "ok" in outcome, outcome
    assert peak_mb < PEAK_BOUND_MB, f"peak RSS {peak_mb:.0f} MB"


def test_oversized_image_member_is_refused_before_it_is_read(tmp_path, mk):
    archive = _tar(tmp_path / "big.tar.gz", mk.tree_files(), zeros={"train/cat/zz.png": 100 * MiB})
    outcome, peak_mb = _ingest_in_child(tmp_path, archive)
    assert outcome["type"] == "InputLimitError", outcome
    msg = outcome["error"]
    assert "train/cat/zz.png" in msg and "data.limits.member_bytes = 67,108,864" in msg
    assert "--set data.limits.member_bytes=134217728" in msg  # how to raise it
    assert peak_mb < 100, f"peak RSS {peak_mb:.0f} MB"  # nothing of the member was inflated into memory


def test_archive_total_limit_counts_skipped_members(tmp_path, mk):
    files = mk.tree_files()
    archive = _tar(tmp_path / "x.tar.gz", {**files, "notes/README.txt": bytes(5000)})
    limits = DataLimits(archive_bytes=4000)
    with pytest.raises(InputLimitError, match=r"data\.limits\.archive_bytes = 4,000.*--set data\.limits\.archive_bytes="):
        load_source(archive, DataConfig(root=str(tmp_path / "s"), limits=limits), progress=False, cache=False)
    zipped = mk.write_zip(tmp_path / "x.zip", {**files, "notes/README.txt": bytes(5000)})
    with pytest.raises(InputLimitError, match="archive_bytes"):  # zip: refused from the central directory
        load_source(zipped, DataConfig(root=str(tmp_path / "s"), limits=limits), progress=False, cache=False)
    # the same archives load under the default limits, the README skipped
    ok = load_source(archive, DataConfig(root=str(tmp_path / "s")), progress=False, cache=False)
    assert len(ok["train"]) == 6 and ok["train"].meta["skipped_files"] == 1


@pytest.mark.parametrize("kind", ["dir", "zip"])
def test_member_limit_in_folders_and_zips(tmp_path, mk, kind):
    files = mk.tree_files()
    biggest = max(len(v) for v in files.values())
    source = mk.write_dir(tmp_path / "d", files) if kind == "dir" else mk.write_zip(tmp_path / "x.zip", files)
    cfg = DataConfig(root=str(tmp_path / "s"), limits=DataLimits(member_bytes=biggest - 1))
    with pytest.raises(InputLimitError, match="member_bytes"):
        load_source(source, cfg, progress=False, cache=False)
    cfg = DataConfig(root=str(tmp_path / "s"), limits=DataLimits(member_bytes=biggest))
    assert len(load_source(source, cfg, progress=False, cache=False)["train"]) == 6


# --------------------------------------------------------------------------------------- pixel bombs
def test_pixel_bomb_is_refused_from_the_header(tmp_path, mk):
    """Four 10000x10000 PNGs (~100 kB each) with data.image_size null: refused as too large, low memory."""
    bomb = _png_header_bomb(10000, 10000)
    assert len(bomb) < 200_000
    files = {f"{split}/{cls}/big{i}.png": bomb for split in ("train", "test") for cls in ("a", "b") for i in (0,)}
    archive = _tar(tmp_path / "pixels.tar.gz", files)
    outcome, peak_mb = _ingest_in_child(tmp_path, archive)
    assert outcome["type"] == "InputLimitError", outcome
    msg = outcome["error"]
    assert "10000x10000" in msg and "image_pixels" in msg and "corrupt" not in msg
    assert "--set data.limits.image_pixels=134217728" in msg
    assert peak_mb < PEAK_BOUND_MB, f"peak RSS {peak_mb:.0f} MB"


def test_huge_image_says_too_large_not_corrupt(tmp_path, mk):
    """30000² is over PIL's own bound too (PIL raises before the size is known): still 'too large'."""
    files = mk.tree_files()
    files["train/cat/huge.png"] = _png_header_bomb(30000, 30000, rows=1)
    source = mk.write_dir(tmp_path / "d", files)
    cfg = DataConfig(root=str(tmp_path / "s"), limits=DataLimits(image_pixels=2**40))
    with pytest.raises(InputLimitError, match=r"too large: 900000000 pixels.*Pillow's hard bound") as info:
        load_source(source, cfg, progress=False, cache=False)
    assert "corrupt" not in str(info.value)
    with pytest.raises(InputLimitError, match=r"is 900,000,000, over the limit data\.limits\.image_pixels") as info:
        load_source(source, DataConfig(root=str(tmp_path / "s")), progress=False, cache=False)
    assert "corrupt" not in str(info.value)


def test_dataset_images_and_pixels_limits(tmp_path, mk):
    source = mk.write_dir(tmp_path / "d", mk.tree_files())  # 12 images of 8x8
    root = str(tmp_path / "s")
    with pytest.raises(InputLimitError, match=r"number of images.*dataset_images = 11"):
        load_source(source, DataConfig(root=root, limits=DataLimits(dataset_images=11)), progress=False)
    assert len(load_source(source, DataConfig(root=root, limits=DataLimits(dataset_images=12)),
                           progress=False)["test"]) == 6
    with pytest.raises(InputLimitError, match="dataset_pixels"):
        load_source(source, DataConfig(root=root, limits=DataLimits(dataset_pixels=12 * 64 - 1)), progress=False)
    # pixels are counted after resizing: the same set resized to 4x4 fits in 12 * 16
    small = DataConfig(root=root, image_size=4, limits=DataLimits(dataset_pixels=12 * 16))
    assert load_source(source, small, progress=False)["train"].image_shape == (4, 4, 3)


def test_npz_header_bomb_is_refused_before_inflating(tmp_path):
    """An .npz whose images.npy declares 100000 x 1000 x 1000 x 3 uint8 (300 GB) in a few bytes."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (100000, 1000, 1000, 3)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images.npy", buf.getvalue() + bytes(16))  # the header, then (far too little) data
        labels = io.BytesIO()
        np.save(labels, np.zeros(100000, dtype=np.int64))
        zf.writestr("labels.npy", labels.getvalue())
    with pytest.raises(InputLimitError, match=r"array 'images' \(100000, 1000, 1000, 3\).*dataset_pixels"):
        load_source(path, DataConfig(root=str(tmp_path / "s")), progress=False)


def test_limits_are_configurable_and_strictly_typed(tmp_path):
    params = load_params(None, ["data.limits.image_pixels=100", "data.limits.member_bytes=2048"])
    assert params.data.limits.image_pixels == 100 and params.data.limits.member_bytes == 2048
    with pytest.raises(ConfigError, match="data.limits.image_pixels"):
        load_params(None, ["data.limits.image_pixels=0"])
    with pytest.raises(ConfigError, match="boolean"):
        load_params(None, ["data.limits.image_pixels=true"])
    shipped = load_params(Path(__file__).resolve().parents[2] / "params.yaml", announce=False)
    assert shipped.data.limits == DataLimits()  # params.yaml documents exactly the built-in defaults
