"""The `detoxops` CLI through typer's CliRunner: `data ingest`, `data info`, params and --set handling."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from detoxops.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def tree(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "pets" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
                (folder / f"{i}.png").write_bytes(buf.getvalue())
    return tmp_path / "pets"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_data_commands():
    result = run("data", "--help")
    assert result.exit_code == 0
    assert "ingest" in result.output and "info" in result.output


def test_ingest_then_info(tmp_path, tree):
    result = run("data", "ingest", tree, "--out", tmp_path / "store", "--no-progress", "-p", ROOT / "params.yaml",
                 "--set", "data.image_size=null")
    assert result.exit_code == 0, result.output
    version = Path(result.stdout.splitlines()[0])
    assert version.parent == tmp_path / "store" / "pets" and (version / "version.json").is_file()
    assert "pets: train 8, test 4 images of 8x8x3, 2 classes, hash " + version.name in result.output

    info = run("data", "info", version)
    assert info.exit_code == 0, info.output
    lines = info.output.splitlines()
    assert f"path      {version}" in lines
    assert any(line.split() == ["cat", "4", "2"] for line in lines)
    assert any(line.split() == ["total", "8", "4"] for line in lines)
    assert "images    8x8x3 uint8 (H x W x C)" in lines
    assert any(
        line.strip().startswith("train  poisoned 0, relabelled 0, source_index 0..7") for line in lines
    )

    listing = run("data", "info", version.parent)
    assert listing.exit_code == 0 and "1 version(s)" in listing.output and version.name in listing.output


def test_ingest_to_a_fixed_folder_for_pipelines(tmp_path, tree):
    dest = tmp_path / "pipeline" / "raw"
    first = run("data", "ingest", tree, "--to", dest, "--no-progress", "--set", "data.image_size=8")
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines()[0] == str(dest) and (dest / "version.json").is_file()
    other = run("data", "ingest", tree, "--to", dest, "--no-progress", "--set", "data.image_size=4")
    assert other.exit_code == 1 and "holds other data" in other.output
    forced = run("data", "ingest", tree, "--to", dest, "--force", "--no-progress", "--set", "data.image_size=4")
    assert forced.exit_code == 0 and "images of 4x4x3" in forced.output


def test_ingest_applies_set_overrides(tmp_path, tree):
    result = run("data", "ingest", tree, "--out", tmp_path / "store", "--no-progress", "--set", "data.image_size=4",
                 "--set", "data.train_per_class=1")
    assert result.exit_code == 0, result.output
    assert "train 2, test 4 images of 4x4x3" in result.output


def test_ingest_errors_exit_nonzero_with_message(tmp_path, tree):
    missing = run("data", "ingest", tmp_path / "nope.tar.gz", "--out", tmp_path / "store", "--no-progress")
    assert missing.exit_code == 1
    assert "error: data source not found" in missing.output
    (tree / "train" / "cat" / "9.png").write_bytes(b"not a png")
    corrupt = run("data", "ingest", tree, "--out", tmp_path / "store", "--no-progress")
    assert (
        corrupt.exit_code == 1 and "train/cat/9.png: unreadable, corrupt or truncated image" in corrupt.output
    )
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("version.json"))


def test_bad_override_exits_2_naming_the_key(tmp_path, tree):
    result = run("data", "ingest", tree, "--out", tmp_path / "store", "--set", "data.bogus=1")
    assert result.exit_code == 2 and "data.bogus: unknown key" in result.output
    result = run("data", "info", tmp_path, "--set", "data.image_size=2")
    assert (
        result.exit_code == 2
        and "data.image_size: Value error, must be between 4 and 1024 (or 'auto' / null), got 2" in result.output
    )


def test_info_on_a_plain_folder_is_an_error(tmp_path):
    result = run("data", "info", tmp_path)
    assert result.exit_code == 1 and "not a dataset version folder" in result.output
    result = run("data", "info", tmp_path / "missing")
    assert result.exit_code == 1 and "dataset version not found" in result.output
