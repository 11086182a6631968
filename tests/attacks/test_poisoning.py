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
