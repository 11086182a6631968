"""Which params file a run used is said out loud; booleans are never read as numbers (issue #23)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detoxops.config import ConfigError, load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tree(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = tmp_path / "pets" / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
                (folder / f"{i}.png").write_bytes(buf.getvalue())
    return tmp_path / "pets"


def _cli(cwd: Path, *args) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).parent / "detoxops"
    return subprocess.run([str(cli), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_says_which_params_file_and_warns_without_one(tmp_path, tree):
    work = tmp_path / "elsewhere"
    work.mkdir()
    bare = _cli(work, "data", "ingest", tree, "--out", tmp_path / "s1", "--no-progress")
    assert bare.returncode == 0, bare.stderr
    assert "WARNING: no params.yaml in" in bare.stderr and "built-in defaults" in bare.stderr
    shipped = ROOT / "params.yaml"
    told = _cli(work, "data", "ingest", tree, "--out", tmp_path / "s2", "--no-progress", "--params", shipped,
                "--set", "data.image_size=8")
    assert told.returncode == 0, told.stderr
    assert f"detoxops: params from {shipped} with --set data.image_size=8" in told.stderr
    assert "WARNING" not in told.stderr


@pytest.mark.parametrize("key", ["sampdetox.t1", "victim.lr", "data.image_size", "dataelixir.tau", "serve.port"])
def test_booleans_are_not_numbers(key):
    with pytest.raises(ConfigError, match=rf"{key}: .*expected a number, got the boolean true"):
        load_params(None, [f"{key}=true"])


def test_booleans_still_set_boolean_keys_and_numbers_still_parse():
    params = load_params(None, ["victim.augment=false", "sampdetox.t1=20", "victim.lr=1", "data.image_size=null"])
    assert params.victim.augment is False and params.sampdetox.t1 == 20 and params.victim.lr == 1.0
    assert params.data.image_size is None


def test_cli_refuses_a_boolean_for_a_number(tmp_path, tree):
    result = _cli(ROOT, "data", "ingest", tree, "--out", tmp_path / "s", "--no-progress", "--set",
                  "sampdetox.t1=true")
    assert result.returncode == 2 and "sampdetox.t1" in result.stderr and "boolean" in result.stderr
