import json

import numpy as np
import pytest
from typer.testing import CliRunner

from detoxops.attacks import poison_datasets, registry
from detoxops.cli import app
from detoxops.data import ImageSet

CLASSES = [str(i) for i in range(10)]


def _sets(cifar_small):
    x, y, xt, yt = cifar_small
    train = ImageSet(images=x, labels=y, class_names=CLASSES, source_index=np.arange(len(y)) + 1000,
                     meta={"split": "train"})
    test = ImageSet(images=xt, labels=yt, class_names=CLASSES, meta={"split": "test"})
    return train, test


def test_dirty_label_datasets(cifar_small):
    train, test = _sets(cifar_small)
    attack = registry.create("badnets", seed=5)
    ptrain, ptest = poison_datasets(attack, train, test)
    assert len(ptrain) == len(train) and ptrain.poisoned.sum() == 20
    assert (ptrain.labels[ptrain.poisoned] == 0).all()
    assert np.array_equal(ptrain.original_labels, train.labels)
    assert np.array_equal(ptrain.source_index, train.source_index)
    assert np.array_equal(ptrain.images[~ptrain.poisoned], train.images[~ptrain.poisoned])
    assert ptrain.meta["attack"]["name"] == "badnets" and ptrain.meta["attack"]["seed"] == 5
    assert ptrain.meta["attack"]["num_poisoned"] == 20
    # triggered test: non-target images only, labelled with the target, true labels kept
    assert len(ptest) == 90 and ptest.poisoned.all() and (ptest.labels == 0).all()
    assert (ptest.original_labels != 0).all()
    assert np.array_equal(ptest.source_index, np.flatnonzero(test.labels != 0))
    assert (ptest.images[:, 29:, 29:] == 255).all()
    json.dumps(ptrain.meta), json.dumps(ptest.meta)


def test_clean_label_and_loop_snapshot(cifar_small):
    train, test = _sets(cifar_small)
    ptrain, _ = poison_datasets(registry.create("sig"), train, test)
    assert np.array_equal(ptrain.poisoned, train.labels == 0) and np.array_equal(ptrain.labels, train.labels)
    wtrain, _ = poison_datasets(registry.create("wanet", options={"batch_size": 50}), train, test)
    snap = wtrain.meta["attack"]["snapshot"]
    assert snap["num_bd"] == 4 * 5 and snap["num_cross"] == 4 * 10
    assert wtrain.poisoned.sum() == 20


def test_unfitted_and_mismatched(cifar_small):
    train, test = _sets(cifar_small)
    with pytest.raises(ValueError, match="fitted"):
        poison_datasets(registry.create("lf"), train, test)
    with pytest.raises(ValueError, match="16x16"):
        poison_datasets(registry.create("badnets", image_size=16), train, test)
    with pytest.raises(ValueError, match="classes"):
        poison_datasets(registry.create("badnets", num_classes=5), train, test)


@pytest.mark.parametrize("name", ["badnets", "wanet"])
def test_cli_attack_run(tmp_path, name):
    out = tmp_path / "out"
    # both spellings of the attack choice: --set attack.name=… and the --attack shortcut
    choice = ["--set", f"attack.name={name}"] if name == "badnets" else ["--attack", name]
    args = ["attack", "run", "--out", str(out), "--no-progress", *choice,
            "--set", "data.image_size=16", "--set", f"data.root={tmp_path / 'data'}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    train, test = ImageSet.load(out / "train"), ImageSet.load(out / "test")
    record = json.loads((out / "attack.json").read_text())
    assert record["name"] == name and record["image_size"] == 16
    assert train.poisoned.sum() == record["train"]["num_poisoned"] > 0
    assert (test.original_labels != 0).all() and (test.labels == 0).all()
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "already exists" in again.output


def test_cli_list_and_bad_option(tmp_path):
    result = CliRunner().invoke(app, ["attack", "list"])
    assert result.exit_code == 0 and "wanet" in result.output and "clean-label" in result.output
    bad = CliRunner().invoke(app, ["attack", "run", "--out", str(tmp_path / "o"),
                                   "--set", "attack.options={badnets: {nope: 1}}"])
    assert bad.exit_code == 2


def test_cli_lf_with_ready_pattern(tmp_path):
    pattern = np.zeros((16, 16, 3), dtype=np.uint8)
    pattern[4:12, 4:12, 2] = 51
    np.save(tmp_path / "p.npy", pattern)
    out = tmp_path / "lf"
    result = CliRunner().invoke(app, ["attack", "run", "--out", str(out), "--no-progress",
                                      "--set", "attack.name=lf", "--set", "data.image_size=16",
                                      "--set", f"data.root={tmp_path / 'data'}",
                                      "--set", f"attack.options={{lf: {{pattern_path: '{tmp_path / 'p.npy'}'}}}}"])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(out / "state" / "lf_pattern.npy"), pattern)
    test = ImageSet.load(out / "test")
    assert (test.images[:, 4:12, 4:12, 2] >= 51).all()


def test_jpeg_storage_of_the_changed_training_images(cifar_small, tmp_path):
    """attack.jpeg_quality: the images an attack changes are stored as JPEG (a JPEG dataset's poisoned images are
    JPEG too); the others stay byte-identical, the test trigger is applied as computed, the record keeps it."""
    from detoxops.attacks.base import jpeg_roundtrip
    from detoxops.config import AttackConfig

    train, test = _sets(cifar_small)
    plain, plain_test = poison_datasets(registry.create("blended", seed=5), train, test)
    stored, stored_test = poison_datasets(registry.create("blended", seed=5, jpeg_quality=75), train, test)
    flags = plain.poisoned
    assert np.array_equal(stored.poisoned, flags) and np.array_equal(stored.labels, plain.labels)
    assert np.array_equal(stored.images[~flags], train.images[~flags])
    assert np.array_equal(stored.images[flags], jpeg_roundtrip(plain.images[flags], 75))
    assert not np.array_equal(stored.images[flags], plain.images[flags])
    assert np.array_equal(stored_test.images, plain_test.images)
    assert stored.meta["attack"]["jpeg_quality"] == 75 and "jpeg_quality" not in plain.meta["attack"]

    run = tmp_path / "run"
    run.mkdir()
    (run / "attack.json").write_text(json.dumps(stored.meta["attack"]))
    assert registry.from_record(run).jpeg_quality == 75
    with pytest.raises(ValueError, match="jpeg_quality"):
        registry.create("badnets", jpeg_quality=0)
    with pytest.raises(ValueError, match="jpeg_quality"):
        AttackConfig(jpeg_quality=101)


def test_jpeg_roundtrip_is_a_jpeg_codec_pass():
    from detoxops.attacks.base import jpeg_roundtrip

    rng = np.random.default_rng(0)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8), 8, 1), 8, 2)
    once = jpeg_roundtrip(smooth, 75)
    assert once.shape == smooth.shape and once.dtype == np.uint8
    assert np.abs(once.astype(int) - smooth).mean() < 12  # lossy, close
    noise = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert np.abs(jpeg_roundtrip(noise, 75).astype(int) - noise).mean() > 10  # high frequencies are quantised
    with pytest.raises(ValueError, match="uint8"):
        jpeg_roundtrip(noise.astype(np.float32), 75)


def test_loop_attack_training_batches_store_their_changed_samples_as_jpeg(cifar_small):
    import torch

    from detoxops.attacks.base import jpeg_roundtrip

    x, y, _, _ = cifar_small
    xb = torch.from_numpy(x[:128]).permute(0, 3, 1, 2).float() / 255
    yb = torch.from_numpy(y[:128])
    plain = registry.create("bpp", options={"post_transform": False})
    stored = registry.create("bpp", options={"post_transform": False}, jpeg_quality=75)
    out, out_y = plain.training_batch(xb, yb, torch.Generator().manual_seed(0))  # no jpeg: batch_transform's
    ref, ref_y = plain.batch_transform(xb, yb, torch.Generator().manual_seed(0))
    assert torch.equal(out, ref) and torch.equal(out_y, ref_y)
    got, got_y = stored.training_batch(xb, yb, torch.Generator().manual_seed(0))
    changed = (ref != xb).flatten(1).any(1)
    assert 0 < int(changed.sum()) < len(xb) and torch.equal(got_y, ref_y)
    assert torch.equal(got[~changed], xb[~changed])  # untouched samples pass through
    u8 = (ref[changed] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    expect = torch.from_numpy(jpeg_roundtrip(u8, 75)).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(got[changed], expect)
