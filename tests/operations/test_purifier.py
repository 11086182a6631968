"""detoxops.operations.purifier: the one purifier rule (choose, load, prepare) and ``detoxops diffusion prepare``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from detoxops.cli import app
from detoxops.config import DiffusionConfig, load_params
from detoxops.data import ImageSet, save_version
from detoxops.diffusion import load_purifier
from detoxops.operations import choose_purifier, prepare_purifier


def _train(size: int) -> ImageSet:
    rng = np.random.default_rng(0)
    return ImageSet(rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8), np.arange(8) % 2, ["a", "b"])


def test_prepare_copies_the_shipped_one(tmp_path):
    outcome = prepare_purifier(_train(16), DiffusionConfig(), tmp_path / "purifier", source="toy")
    assert outcome.origin == "shipped:digits-16" and outcome.folder == tmp_path / "purifier"
    assert json.loads((tmp_path / "purifier" / "origin.json").read_text()) == outcome.record()
    assert load_purifier(tmp_path / "purifier").image_size == 16


def test_prepare_without_copy_uses_the_shipped_folder_where_it_is(tmp_path):
    outcome = prepare_purifier(_train(16), DiffusionConfig(), tmp_path / "purifier", copy=False)
    assert outcome.origin == "shipped:digits-16" and not (tmp_path / "purifier").exists()
    assert (outcome.folder / "config.json").is_file()


def test_prepare_trains_when_nothing_fits(tmp_path):
    """8x8 images: no configured or shipped purifier, so one is trained (2 steps here) at that size."""
    cfg = load_params(None, ["diffusion.train.steps=2", "diffusion.train.batch_size=4",
                             "diffusion.train.checkpoint_every=1"]).diffusion
    outcome = prepare_purifier(_train(8), cfg, tmp_path / "purifier", source="toy", progress=False)
    assert outcome.origin == "trained" and outcome.image_size == 8 and outcome.source == "toy"
    assert load_purifier(tmp_path / "purifier").image_size == 8


def test_choose_names_a_missing_or_mis_sized_purifier(tmp_path):
    with pytest.raises(FileNotFoundError, match="diffusion.purifier"):
        choose_purifier(None, DiffusionConfig(purifier=str(tmp_path / "nope")), 16)
    with pytest.raises(FileNotFoundError, match="no purifier for 8x8"):
        choose_purifier(None, DiffusionConfig(), 8)
    folder, _ = choose_purifier(None, DiffusionConfig(), 16)
    with pytest.raises(ValueError, match="trained on 16x16 images but the data are 32x32"):
        choose_purifier(folder, DiffusionConfig(), 32)
    assert choose_purifier(folder, DiffusionConfig(), 16) == (folder, "explicit")
    # an explicit shipped name (the benchmarks' --purifier) resolves like diffusion.purifier's
    assert choose_purifier("digits-16", DiffusionConfig(), 16) == (folder, "shipped:digits-16")
    with pytest.raises(ValueError, match="32x32"):
        choose_purifier("cifar10-32-v2", DiffusionConfig(), 16)
    with pytest.raises(FileNotFoundError, match="nor a shipped purifier's name"):
        choose_purifier(tmp_path / "nope", DiffusionConfig(), 16)


def test_diffusion_prepare_command(tmp_path):
    ds = _train(16)
    version = save_version({"train": ds, "test": ds}, None, "toy", source="test", at=tmp_path / "raw")
    res = CliRunner().invoke(app, ["diffusion", "prepare", "--data", str(version), "--out", str(tmp_path / "p"),
                                   "--no-progress", "--params", "params.yaml"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["origin"] == "shipped:digits-16"
    missing = CliRunner().invoke(app, ["diffusion", "prepare", "--data", str(tmp_path / "nope"), "--out",
                                       str(tmp_path / "q"), "--params", "params.yaml"])
    assert missing.exit_code == 1 and "nope" in missing.output



def test_dataelixir_purifier_its_own_the_global_one_then_its_profiles():
    from detoxops.config import DataElixirConfig, Params
    from detoxops.operations import dataelixir_diffusion, dataelixir_purifier

    default = Params()
    # cpu_cifar10 (auto at 32 px) was chosen with the trained-on purifier; SampDetox's rule is unchanged
    assert dataelixir_purifier(default, 32) == "cifar10-32-v2" and default.diffusion.purifier is None
    assert dataelixir_purifier(default, 16) is None  # cpu_digits: the size's shipped one
    assert dataelixir_purifier(default, 64) is None  # auto -> cpu_cifar10, but its purifier is for 32 px only
    quick = Params(dataelixir=DataElixirConfig(profile="cpu_cifar10_quick"))
    assert dataelixir_purifier(quick, 32) is None
    # a purifier set for every operation wins over the profile's, DataElixir's own over both
    glob = Params(diffusion=DiffusionConfig(purifier="cifar10-32"))
    assert dataelixir_purifier(glob, 32) == "cifar10-32"
    own = glob.model_copy(update={"dataelixir": DataElixirConfig(purifier="cifar10-32-levelmap")})
    assert dataelixir_purifier(own, 32) == "cifar10-32-levelmap"
    assert dataelixir_diffusion(own, 32).purifier == "cifar10-32-levelmap" and own.diffusion.purifier == "cifar10-32"
    # and the folder it names is the one choose_purifier gives
    folder, origin = choose_purifier(None, dataelixir_diffusion(default, 32), 32)
    assert origin == "shipped:cifar10-32-v2" and folder.name == "cifar10-32-v2"


def test_diffusion_prepare_for_dataelixir(tmp_path):
    small = save_version({"train": _train(16), "test": _train(16)}, None, "toy", source="test", at=tmp_path / "raw16")
    cifar = save_version({"train": _train(32), "test": _train(32)}, None, "toy", source="test", at=tmp_path / "raw32")
    run = CliRunner().invoke
    base = ["diffusion", "prepare", "--no-progress", "--params", "params.yaml"]
    # 32 px: the profile's purifier, not the size's default that `prepare` gives SampDetox
    assert run(app, [*base, "--data", str(cifar), "--out", str(tmp_path / "all32")]).exit_code == 0
    res = run(app, [*base, "--data", str(cifar), "--for", "dataelixir", "--out", str(tmp_path / "elixir32")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "all32" / "origin.json").read_text())["origin"] == "shipped:cifar10-32"
    assert json.loads((tmp_path / "elixir32" / "origin.json").read_text())["origin"] == "shipped:cifar10-32-v2"
    # 16 px: no purifier of the profile's own, so the fallback (the pipeline's prepared one) is copied
    assert run(app, [*base, "--data", str(small), "--out", str(tmp_path / "all16")]).exit_code == 0
    res = run(app, [*base, "--data", str(small), "--for", "dataelixir", "--fallback", str(tmp_path / "all16"),
                    "--out", str(tmp_path / "elixir16")])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "elixir16" / "origin.json").read_text())
    assert record["origin"] == "configured" and record["source"] == str((tmp_path / "all16").resolve())
    # the fallback is not used where the profile names one, and bad uses are refused with the reason
    res = run(app, [*base, "--data", str(cifar), "--for", "dataelixir", "--fallback", str(tmp_path / "all16"),
                    "--out", str(tmp_path / "elixir32b")])
    assert res.exit_code == 0 and "cifar10-32-v2" in (tmp_path / "elixir32b" / "origin.json").read_text()
    bad = run(app, [*base, "--data", str(small), "--fallback", str(tmp_path / "all16"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "--fallback needs --for dataelixir" in bad.output
    bad = run(app, [*base, "--data", str(small), "--for", "sampdetox", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "--for" in bad.output
    bad = run(app, [*base, "--data", str(small), "--for", "dataelixir", "--fallback", str(tmp_path / "nope"),
                    "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "holds no purifier" in bad.output
