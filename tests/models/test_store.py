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


def test_store_keeps_only_what_the_test_trigger_needs_in_fp16(tmp_path):
    """LC's adversarial training images stay behind (its test trigger is fixed); a fitted trigger's float tensors
    are stored in fp16 with integers and metadata unchanged, and load back into fp32 networks."""
    import json

    import numpy as np
    from safetensors import safe_open
    from safetensors.torch import save_file

    from detoxops.attacks.generators import load_modules, save_modules
    from detoxops.models.store import store_attack_state, victim_attack

    def attack_run(name: str, state: dict) -> object:
        run = tmp_path / f"run-{name}"
        (run / "state").mkdir(parents=True)
        (run / "attack.json").write_text(json.dumps({"name": name, "target": 0, "poison_ratio": 0.1, "seed": 0,
                                                     "image_size": 16, "num_classes": 10, "options": {}}))
        save_file(state, str(run / "state" / f"{name}.safetensors"), metadata={"made_by": "test"})
        return run

    victim = tmp_path / "store" / "lc"
    save_classifier(build_classifier("small_cnn", 10, image_size=16, width=4), victim)
    store_attack_state(victim, attack_run("lc", {"adv_images": torch.zeros(2, 16, 16, 3, dtype=torch.uint8)}))
    assert not (victim / "attack" / "state").exists()
    attack = victim_attack(victim)
    triggered, _, kept = attack.poison_test_arrays(np.full((3, 16, 16, 3), 128, np.uint8), np.array([1, 0, 2]))
    assert list(kept) == [0, 2] and set(np.unique(triggered[:, :3, :3])) == {0, 255}

    net = torch.nn.Linear(3, 2)
    weights = tmp_path / "net.safetensors"
    save_modules(weights, {"g": net}, {"made_by": "test"})
    with safe_open(str(weights), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    state["steps"] = torch.tensor([7], dtype=torch.int64)
    victim = tmp_path / "store" / "badnets"
    save_classifier(build_classifier("small_cnn", 10, image_size=16, width=4), victim)
    store_attack_state(victim, attack_run("badnets", state))
    stored = victim / "attack" / "state" / "badnets.safetensors"
    with safe_open(str(stored), framework="pt") as f:
        assert f.metadata() == {"made_by": "test"}
        assert f.get_tensor("g.weight").dtype == torch.float16 and f.get_tensor("steps").tolist() == [7]
    loaded = torch.nn.Linear(3, 2)
    load_modules(stored, {"g": loaded}, "test")
    assert loaded.weight.dtype == torch.float32
    assert torch.equal(loaded.weight, net.weight.detach().half().float())
    assert 0 < (loaded.weight - net.weight).abs().max() < 1e-3


def test_stored_ssba_keeps_the_encoder_only_and_triggers_the_same(tmp_path):
    import json

    import numpy as np
    import pytest

    from detoxops.attacks import registry
    from detoxops.models.store import store_attack_state, victim_attack

    ssba = registry.create("ssba", target=0, image_size=16, num_classes=10,
                           options={"width": 4, "steps": 2, "batch_size": 4})
    # two fitting steps: a fitted (if useless) encoder, enough to compare the store's copy with the run's
    ssba.fit(np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), progress=False)
    run = tmp_path / "run"
    ssba.save_state(run / "state")
    (run / "attack.json").write_text(json.dumps(ssba.describe()))
    victim = tmp_path / "store" / "ssba"
    save_classifier(build_classifier("small_cnn", 10, image_size=16, width=4), victim)
    store_attack_state(victim, run)
    stored = victim_attack(victim)
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    original, copy = ssba.apply_trigger(images), stored.apply_trigger(images)
    assert np.abs(original.astype(int) - copy.astype(int)).max() <= 1 and np.mean(original != copy) < 0.05
    assert not stored.has_decoder and ssba.decode_bits(images).shape == (6, ssba.options.bits)
    with pytest.raises(ValueError, match="no decoder"):
        stored.decode_bits(images)
    full = sum(p.stat().st_size for p in (run / "state").iterdir())
    kept = sum(p.stat().st_size for p in (victim / "attack" / "state").iterdir())
    assert kept < full / 2  # half precision, and no decoder
