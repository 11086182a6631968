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
