"""The served guard: a tiny digits-sized "SampDetox + victim" pyfunc, logged as code with safetensors artifacts,
registered, served by ``mlflow models serve --env-manager local`` and queried over HTTP.

No Prefect server is needed (the ``platform_env`` harness is not used); MLflow lives in a temporary SQLite DB.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.platform, pytest.mark.timeout(420)]

MODEL_NAME = "detoxops-guard-test"


def _tiny_guard_parts(tmp_path: Path):
    import torch

    from detoxops.diffusion.unet import shipped_purifier_dir
    from detoxops.models import build_classifier, save_classifier

    torch.manual_seed(0)
    clf = build_classifier("small_cnn", 10, 3, 16, seed=0, width=8)
    classifier_dir = save_classifier(clf, tmp_path / "victim")
    purifier_dir = shipped_purifier_dir("digits-16")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    # cheap SampDetox: faithful profile (no t_mask=500 restoration), DDIM with a coarse stride
    cfg = {"profile": "faithful", "sampler": "ddim", "ddim_stride": 20, "batch_size": 8, "seed": 0}
    return classifier_dir, purifier_dir, images, cfg


def test_check_artifacts_refuses_pickle_weights(tmp_path):
    from tasks.pyfunc_model import check_artifacts

    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"x")
    check_artifacts(tmp_path / "ok")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="safetensors only"):
        check_artifacts(tmp_path / "bad")


def test_guard_served_over_http_matches_in_process(tmp_path, mlflow_store, local_server):
    import mlflow
    import torch

    from tasks.pyfunc_model import log_guard_model
    from tasks.tracking import ensure_experiment

    torch.set_num_threads(1)
    classifier_dir, purifier_dir, images, cfg = _tiny_guard_parts(tmp_path)
    exp_id = ensure_experiment("detoxops/test-serve", root=tmp_path)
    with mlflow.start_run(experiment_id=exp_id):
        info = log_guard_model(classifier_dir, purifier_dir, "sampdetox", cfg, images, tmp_path / "work",
                               registered_model_name=MODEL_NAME)
    version = info.registered_model_version
    assert str(version) == "1"

    # logged as code + safetensors: nothing in the model folder would be unpickled
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/{version}", dst_path=str(tmp_path / "dl")))
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".pth", ".bin", ".ckpt"))], files
    assert any(f.endswith("/model.safetensors") for f in files), files  # the victim
    assert any(f.endswith("/diffusion_pytorch_model.safetensors") for f in files), files  # the purifier
    assert "pyfunc_model.py" in files and "python_model.pkl" not in files

    expected = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}").predict(images)
    expected = np.asarray(expected).astype(int).tolist()
    assert all(0 <= y < 10 for y in expected)

    port = local_server.free_port()
    env = local_server.env(mlflow_store)
    serve = local_server.mlflow_serve(f"models:/{MODEL_NAME}/{version}", port, env)
    with local_server.running(serve, port, env, tmp_path / "serve.log") as base:
        body = json.dumps({"inputs": images.tolist()}).encode()
        req = urllib.request.Request(f"{base}/invocations", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            reply = json.loads(r.read())
        served = [int(y) for y in reply["predictions"]]
        assert all(0 <= y < 10 for y in served)
        assert served == expected
        # the guard's own client speaks the same contract to mlflow serve (JSON wire), floats with a declared range
        from detoxops.defenses.guard import HttpClassifier
        from detoxops.serving import classify_over_http

        assert HttpClassifier(base, wire="json")(images).tolist() == expected
        normalised = images.astype(np.float32) / 255.0
        assert classify_over_http(base, normalised, pixel_range=(0, 1), wire="json").tolist() == expected
        undeclared = urllib.request.Request(  # floats without a range: a 400 naming it, not a silent cast to 0
            f"{base}/invocations", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"inputs": normalised[:1].tolist()}).encode(),
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(undeclared, timeout=60)
        assert info.value.code == 400 and "pixel_range" in info.value.read().decode()


def test_plain_victim_guard_needs_no_purifier(tmp_path, mlflow_store):
    import mlflow

    from detoxops.defenses.guard import Detoxifier
    from detoxops.models import load_classifier
    from tasks.pyfunc_model import log_guard_model
    from tasks.tracking import ensure_experiment

    classifier_dir, _, images, cfg = _tiny_guard_parts(tmp_path)
    exp_id = ensure_experiment("detoxops/test-serve", root=tmp_path)
    with mlflow.start_run(experiment_id=exp_id):
        info = log_guard_model(classifier_dir, None, "none", cfg, images, tmp_path / "work")
    pred = mlflow.pyfunc.load_model(info.model_uri).predict(images)
    direct = Detoxifier(load_classifier(classifier_dir), None).predict(images)
    assert np.asarray(pred).tolist() == np.asarray(direct).tolist()
