"""``data.image_size: auto``: the data decides the size (issue #24), and says why."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from detoxops.config import DataConfig, load_params
from detoxops.data import load_source
from detoxops.data.sizes import decide_image_size, probe_image_sizes


def load(path, tmp_path, **kw):
    return load_source(path, DataConfig(root=str(tmp_path / "store"), **kw), progress=False, cache=False)


def test_auto_is_the_shipped_default():
    assert DataConfig().image_size == "auto"
    assert load_params("params.yaml").data.image_size == "auto"


def test_a_uniform_folder_keeps_its_size(tmp_path, mk, caplog):
    root = mk.write_dir(tmp_path / "t", mk.tree_files(size=24))
    assert probe_image_sizes(root) == {(24, 24): 12}
    decision = decide_image_size(root, "auto")
    assert decision.image_size is None and decision.expected == 24 and "kept at 24x24" in decision.note
    with caplog.at_level(logging.INFO, logger="detoxops.data"):
        splits = load(root, tmp_path)
    assert splits["train"].image_shape == (24, 24, 3)
    assert "images kept at 24x24, the source's size" in caplog.text


def test_mixed_sizes_go_to_the_most_common_one_and_say_so(tmp_path, mk):
    files = mk.tree_files(size=12)
    files["train/cat/big.png"] = mk.encode(mk.random_pixels(0, 20))
    root = mk.write_dir(tmp_path / "t", files)
    decision = decide_image_size(root, "auto")
    assert decision.image_size == 12 and "mixed image sizes (12x12 (12), 20x20 (1)): resized to 12x12" in decision.note
    assert load(root, tmp_path)["train"].image_shape == (12, 12, 3)
    # asked for: null keeps sizes and refuses the mix, an integer resizes
    with pytest.raises(ValueError, match="mixed image sizes"):
        load(root, tmp_path, image_size=None)
    assert load(root, tmp_path, image_size=8)["train"].image_shape == (8, 8, 3)


def test_one_non_square_size_is_cut_to_its_shorter_side(tmp_path, mk):
    files = {f"train/{c}/{i}.png": mk.encode(np.full((10, 14, 3), 40 * i, np.uint8)) for c in ("a", "b", "c")
             for i in range(3)}
    decision = decide_image_size(mk.write_dir(tmp_path / "t", files), "auto")
    assert decision.image_size == 10 and "14x10, not square" in decision.note


def test_an_archive_is_probed_from_its_headers(tmp_path, mk):
    archive = mk.write_zip(tmp_path / "t.zip", mk.tree_files(size=20))
    assert decide_image_size(archive, "auto").expected == 20
    assert load(archive, tmp_path)["test"].image_shape == (20, 20, 3)


def test_builtin_sources_have_their_size_and_explicit_values_win(tmp_path):
    assert decide_image_size("digits", "auto").image_size == 16
    assert decide_image_size("cifar10", "auto").image_size == 32
    assert load("digits", tmp_path)["train"].image_shape == (16, 16, 3)  # the demo's size, as before
    assert load("digits", tmp_path, image_size=8)["train"].image_shape == (8, 8, 3)
    assert decide_image_size("digits", None).image_size is None


def test_a_stored_version_keeps_its_size(tmp_path, mk):
    from detoxops.data import ingest

    version = ingest(mk.write_dir(tmp_path / "t", mk.tree_files(size=24)), tmp_path / "store",
                     DataConfig(root=str(tmp_path / "store")), progress=False)
    assert probe_image_sizes(version) == {}
    assert decide_image_size(version, "auto").image_size is None
    assert load(version, tmp_path)["train"].image_shape == (24, 24, 3)


def test_bad_values_are_refused_with_the_key():
    with pytest.raises(ValueError, match="image_size"):
        DataConfig(image_size="big")
    with pytest.raises(ValueError, match="between 4 and 1024"):
        DataConfig(image_size=2)
    with pytest.raises(ValueError, match="positive integer, 'auto' or null"):
        decide_image_size("digits", -3)


def test_cli_ingest_stores_the_data_size_and_says_why(tmp_path, mk):
    import json

    from typer.testing import CliRunner

    from detoxops.cli import app

    root = mk.write_dir(tmp_path / "t", mk.tree_files(size=24))
    result = CliRunner().invoke(app, ["data", "ingest", str(root), "--out", str(tmp_path / "store"),
                                      "--no-progress", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    assert "images kept at 24x24, the source's size" in result.output
    version = next(line for line in result.stdout.splitlines() if line.startswith("/"))
    meta = json.loads((tmp_path / "store" / version.split("/store/")[1] / "version.json").read_text())
    assert "24x24" in result.stdout and meta["config"]["image_size"] is None  # stored as the source's size
