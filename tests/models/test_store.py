"""The victim store: export a classifier in fp16, find it by name, keep its predictions."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from detoxops.cli import app
from detoxops.models import build_classifier, load_classifier, save_classifier
from detoxops.models.store import STORE_ENV, list_victims, resolve_classifier_path


def test_export_half_and_load_by_name(tmp_path, monkeypatch):
    model = build_classifier("fast_cnn", 10, 3, 16, seed=0, widths=[8, 16, 16]).eval()
    model.init_whitening(torch.rand(32, 3, 16, 16))
    save_classifier(model, tmp_path / "run" / "victim", meta={"ca": 0.9, "attack": "clean"})
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["victim", "export", str(tmp_path / "run" / "victim"), "--name",
                                      "toy/clean", "--store", str(store)])
    assert result.exit_code == 0, result.output
    full = (tmp_path / "run" / "victim" / "model.safetensors").stat().st_size
    assert (store / "toy" / "clean" / "model.safetensors").stat().st_size < 0.65 * full

    monkeypatch.setenv(STORE_ENV, str(store))
    loaded = load_classifier("toy/clean")
    assert loaded.detoxops_meta["fp16_weights"] is True and loaded.detoxops_meta["ca"] == 0.9
    assert loaded.groups[0].norm1.running_var.dtype == torch.float32
    x = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-2)
    assert [v["name"] for v in list_victims(store)] == ["toy/clean"]
    listed = CliRunner().invoke(app, ["victim", "list", "--store", str(store)])
    assert "toy/clean" in listed.output and "fast_cnn" in listed.output


def test_unknown_name_lists_the_store(tmp_path):
    save_classifier(build_classifier("small_cnn", 2, image_size=8, width=4), tmp_path / "a" / "b")
    try:
        resolve_classifier_path("nope", store=tmp_path)
    except FileNotFoundError as exc:
        assert "a/b" in str(exc) and "nope" in str(exc)
    else:
        raise AssertionError("an unknown name must raise")
    assert resolve_classifier_path("a/b", store=tmp_path) == tmp_path / "a" / "b"


def test_export_keeps_the_attack_record_and_rebuilds_the_attack(tmp_path, monkeypatch):
    import json

    import numpy as np

    from detoxops.models.store import victim_attack

    model = build_classifier("small_cnn", 10, image_size=16, width=4)
    save_classifier(model, tmp_path / "run" / "victim", meta={"attack": "badnets"})
    record = {"name": "badnets", "target": 3, "poison_ratio": 0.1, "seed": 5, "image_size": 16,
              "num_classes": 10, "options": {"margin": 1}}
    run = tmp_path / "poisoned"
    (run / "state").mkdir(parents=True)
    (run / "attack.json").write_text(json.dumps(record))
    (run / "state" / "note.txt").write_text("fitted trigger state travels with the victim")
    store = tmp_path / "store"
    args = ["victim", "export", str(tmp_path / "run" / "victim"), "--name", "toy/badnets", "--store", str(store)]
    result = CliRunner().invoke(app, [*args, "--attack-run", str(run)])
    assert result.exit_code == 0, result.output
    assert (store / "toy" / "badnets" / "attack" / "state" / "note.txt").is_file()
    assert load_classifier(store / "toy" / "badnets").detoxops_meta["attack_record"]["target"] == 3

    monkeypatch.setenv(STORE_ENV, str(store))
    attack = victim_attack("toy/badnets")
    assert attack.name == "badnets" and attack.target == 3 and attack.options.margin == 1
    x = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    triggered, labels, kept = attack.poison_test_arrays(x, np.array([0, 1, 3, 2]))
    assert list(kept) == [0, 1, 3] and (triggered[:, 13:15, 13:15] == 255).all()
    assert victim_attack(store / "toy" / "badnets").target == 3
    # a clean victim has no attack; a folder that is not an attack run is refused
    CliRunner().invoke(app, ["victim", "export", str(tmp_path / "run" / "victim"), "--name", "toy/clean",
                             "--store", str(store)])
    assert victim_attack("toy/clean") is None
    bad = CliRunner().invoke(app, [*args, "--attack-run", str(tmp_path)])
    assert bad.exit_code != 0 and "attack.json" in bad.output
