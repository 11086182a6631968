"""The result tables' arithmetic (pure pandas) and the small readers beside them."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from dashboards import dvc_meta, results, settings, tryit


def frame(rows: list[dict]) -> pd.DataFrame:
    base = {"root_run_name": "r1", "root_run_id": "R1", "dataset": "digits", "model": "small_cnn", "run_id": None}
    return pd.DataFrame([{**base, "run_id": f"x{i}", **r} for i, r in enumerate(rows)])


def test_defense_table_deltas_are_against_none_of_the_same_attack_and_run():
    runs = frame([
        {"kind": "defense", "attack": "badnets", "defense": "sampdetox", "ca": 0.90, "pa": 0.80, "asr": 0.05},
        {"kind": "defense", "attack": "badnets", "defense": "none", "ca": 0.95, "pa": 0.10, "asr": 0.97},
        {"kind": "defense", "attack": "wanet", "defense": "sampdetox", "ca": 0.88, "pa": 0.70, "asr": 0.20},
        {"kind": "defense", "attack": "wanet", "defense": "none", "ca": 0.93, "pa": 0.30, "asr": 0.60},
        # another flow run with its own baseline must not mix in
        {"kind": "defense", "attack": "badnets", "defense": "none", "ca": 0.50, "pa": 0.5, "asr": 0.5,
         "root_run_id": "R2", "root_run_name": "r2"},
        {"kind": "victim", "attack": "badnets", "ca": 0.1},
    ])
    table = results.defense_table(runs)
    assert len(table) == 5
    row = table[(table.root_run_id == "R1") & (table.attack == "badnets") & (table.defense == "sampdetox")].iloc[0]
    assert row.d_ca == pytest.approx(-0.05) and row.d_pa == pytest.approx(0.70) and row.d_asr == pytest.approx(-0.92)
    none = table[(table.defense == "none")]
    assert (none[["d_ca", "d_pa", "d_asr"]].abs() < 1e-12).all().all()
    wide = results.paper_table(table[table.root_run_id == "R1"])
    assert list(wide.columns[:3]) == ["none · CA", "none · PA", "none · ASR"]
    assert wide.loc["wanet", "sampdetox · ΔASR"] == pytest.approx(-40.0)


def test_defense_table_without_baseline_leaves_deltas_empty_and_newest_run_wins():
    runs = frame([
        {"kind": "defense", "attack": "sig", "defense": "sampdetox", "ca": 0.9, "pa": 0.8, "asr": 0.1},
        {"kind": "defense", "attack": "sig", "defense": "sampdetox", "ca": 0.1, "pa": 0.1, "asr": 0.9},  # older
    ])
    table = results.defense_table(runs)
    assert len(table) == 1 and table.ca.iloc[0] == 0.9
    assert table.d_asr.isna().all()


def test_drift_alerts_are_the_flagged_defense_runs_newest_first():
    runs = frame([
        {"kind": "defense", "attack": "lf", "defense": "sampdetox", "drift_flagged": "true", "drift_class": "0",
         "drift_inflow": 0.58, "drift_changed": 0.6},
        {"kind": "defense", "attack": "lf", "defense": "sampdetox", "drift_flagged": "false", "drift_class": "3",
         "drift_inflow": 0.01, "drift_changed": 0.1},  # older run of the same row: not shown
        {"kind": "defense", "attack": "badnets", "defense": "sampdetox", "drift_flagged": "false",
         "drift_class": "3", "drift_inflow": 0.04, "drift_changed": 0.07},
        {"kind": "defense", "attack": "badnets", "defense": "none"},  # runs recorded before the check: no tags
    ])
    alerts = results.drift_alerts(runs)
    assert len(alerts) == 1 and alerts.attack.iloc[0] == "lf" and alerts.drift_inflow.iloc[0] == 0.58
    assert results.drift_alerts(frame([{"kind": "defense", "attack": "x", "defense": "none"}])).empty


def test_dataelixir_table_compares_with_the_poisoned_victim():
    runs = frame([
        {"kind": "sanitize", "attack": "badnets", "tpr": 1.0, "fpr": 0.02, "acc": 0.91, "asr": 0.03},
        {"kind": "victim", "attack": "badnets", "ca": 0.94, "asr": 0.99},
    ])
    table = results.dataelixir_table(runs)
    assert table.d_acc.iloc[0] == pytest.approx(-0.03) and table.d_asr.iloc[0] == pytest.approx(-0.96)


def test_model_column_falls_back_to_the_victim_arch_param():
    runs = pd.DataFrame({"model": [None, "vgg19"], "param.victim.arch": ["small_cnn", "small_cnn"]})
    assert list(results.model_of(runs)) == ["small_cnn", "vgg19"]


def test_empty_inputs_give_empty_tables():
    assert results.defense_table(pd.DataFrame()).empty
    assert results.dataelixir_table(pd.DataFrame()).empty
    assert results.paper_table(pd.DataFrame()).empty


def test_dataset_versions_read_version_json_and_dvc_hashes(tmp_path):
    version = tmp_path / "data" / "digits" / "abc123abc123"
    version.mkdir(parents=True)
    (version / "version.json").write_text(json.dumps({
        "name": "digits", "hash": "abc123abc123ffff", "source": "digits", "created": "2026-01-01T00:00:00Z",
        "splits": {"train": {"count": 40, "num_poisoned": 4}, "test": {"count": 10, "num_poisoned": 0}},
    }))
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0123456789abcdef.dir\n  path: data\n")
    table = dvc_meta.dataset_versions(tmp_path / "data", tmp_path)
    row = table.iloc[0]
    assert (row.dataset, row.version, row.images, row.poisoned) == ("digits", "abc123abc123", 50, 4)
    assert row.dvc_md5 == "0123456789abcdef.dir"
    assert dvc_meta.dataset_versions(tmp_path / "missing", tmp_path).empty


def test_read_image_converts_and_resizes_and_rejects_non_images():
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((40, 30), 128, np.uint8), mode="L").save(buf, format="PNG")
    img = tryit.read_image(buf.getvalue(), 16)
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8 and int(img[0, 0, 0]) == 128
    with pytest.raises(ValueError, match="not an image"):
        tryit.read_image(b"certainly not a png", 16)


def test_settings_resolve_relative_sqlite_against_params_dir(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("tracking:\n  mlflow_uri: sqlite:///runs/mlflow.db\ndata:\n  root: d\n")
    monkeypatch.setenv("DETOXOPS_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DETOXOPS_DATA_ROOT", raising=False)
    s = settings.load_settings()
    assert s.tracking_uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert s.data_root == tmp_path / "d"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert settings.load_settings().tracking_uri == "http://127.0.0.1:5000"


def test_model_folders_named_like_the_role_are_tried_first(tmp_path):
    for name in ("artifacts/purifier", "artifacts/classifier", "a"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "w.safetensors").write_bytes(b"")
    order = [p.relative_to(tmp_path).as_posix() for p in tryit._candidate_dirs(tmp_path, ("classifier",))]
    assert order == ["artifacts/classifier", ".", "a", "artifacts/purifier"]


def test_newest_run_per_flow_is_the_default_selection():
    """A bring-your-own run (flow detox-byo) shows beside the newest benchmark run, not instead of it."""
    flow_runs = pd.DataFrame({"run_id": ["byo2", "bench2", "byo1", "bench1", "demo1"],
                              "flow": ["detox-byo", "benchmark", "detox-byo", "benchmark", "demo"]})
    assert results.newest_run_per_flow(flow_runs) == ["byo2", "bench2", "demo1"]
    assert results.newest_run_per_flow(flow_runs.iloc[:0]) == []


def test_try_it_hands_the_victim_to_a_label_confirming_patch_repair():
    from detoxops.config import PatchRepairConfig, SampDetoxConfig
    from detoxops.diffusion import load_purifier
    from detoxops.diffusion.unet import shipped_purifier_dir

    batches = []

    def victim(batch_u8):  # a black box on uint8 NHWC batches
        batches.append(len(batch_u8))
        return np.zeros(len(batch_u8), dtype=np.int64)

    patch = PatchRepairConfig(stride=500, repair_stride=500, confirm="label", pixel_threshold=0.5).model_copy(
        update={"gate_threshold": -1.0})  # gate every image, so the confirmation must query the victim
    cfg = SampDetoxConfig(profile="repair", sampler="ddim", patch=patch)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    result = tryit.detoxify_one(image, victim, load_purifier(shipped_purifier_dir("digits-16")), cfg)
    assert result.detoxified.shape == image.shape and 2 in batches  # input + repair, in one query
