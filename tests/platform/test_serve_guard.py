"""End to end: the registered guard model ("SampDetox + victim" pyfunc) served by ``python -m tasks.serve_guard`` on
127.0.0.1, queried by ``Detoxifier(url)`` under the contract (issue #23). The same client against ``mlflow models
serve`` of the guard model (JSON wire) is checked in test_pyfunc_serve.py, which starts that server anyway."""

from __future__ import annotations

import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.platform, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "detoxops-guard-serve-test"


@pytest.fixture
def registered_guard(tmp_path, mlflow_store):
    """A width-8 small CNN behind cheap SampDetox (shipped digits purifier), logged and registered as version 1."""
    import mlflow
    import torch

    from detoxops.diffusion.unet import shipped_purifier_dir
    from detoxops.models import build_classifier, save_classifier
    from tasks.pyfunc_model import log_guard_model
    from tasks.tracking import ensure_experiment

    torch.set_num_threads(1)
    clf = build_classifier("small_cnn", 10, 3, 16, seed=0, width=8)
    classifier_dir = save_classifier(clf, tmp_path / "victim")
    images = np.random.default_rng(0).integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    cfg = {"profile": "faithful", "sampler": "ddim", "ddim_stride": 20, "batch_size": 8, "seed": 0}
    exp_id = ensure_experiment("detoxops/test-serve-guard", root=tmp_path)
    with mlflow.start_run(experiment_id=exp_id):
        log_guard_model(classifier_dir, shipped_purifier_dir("digits-16"), "sampdetox", cfg, images[:2],
                        tmp_path / "work", registered_model_name=MODEL_NAME)
    model_uri = f"models:/{MODEL_NAME}/1"
    expected = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(images)).astype(int)
    return mlflow_store, model_uri, images, expected


def test_detoxifier_speaks_the_contract_with_the_served_guard(tmp_path, registered_guard, local_server):
    from detoxops.defenses.guard import Detoxifier
    from detoxops.serving import GuardHTTPError, classify_over_http

    uri, model_uri, images, expected = registered_guard
    port = local_server.free_port()
    log_path = tmp_path / "serve_guard.log"
    command = [sys.executable, "-m", "tasks.serve_guard", "--model", model_uri, "--set", f"serve.port={port}",
               "--set", "serve.max_body_bytes=1048576"]
    with local_server.running(command, port, local_server.env(uri), log_path, cwd=ROOT) as base:
        for wire in ("npy", "json"):  # Detoxifier(url): no local defense, the served guard detoxifies
            got = Detoxifier(base, http_wire=wire).predict(images)
            np.testing.assert_array_equal(got, expected)
        normalised = images.astype(np.float32) / 255.0  # floats with their declared range: same answer
        np.testing.assert_array_equal(classify_over_http(base, normalised, pixel_range=(0, 1)), expected)
        with pytest.raises(GuardHTTPError, match="HTTP 400.*takes \\(N, 16, 16, 3\\)"):
            Detoxifier(base).predict(np.zeros((1, 32, 32, 3), dtype=np.uint8))
        request = urllib.request.Request(  # undeclared floats: a named 400, not a black image with 200
            f"{base}/invocations", method="POST", headers={"Content-Type": "application/json"},
            data=b'{"inputs": ' + str(normalised[:1].tolist()).encode() + b"}",
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=30)
        body = info.value.read().decode()
        assert info.value.code == 400 and "undeclared_float_range" in body
        assert str(float(normalised[0, 0, 0, 0]))[:8] not in body  # no echo of the request
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # 59 MiB declared
            started = time.perf_counter()
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-npy\r\n"
                         b"Content-Length: 61865984\r\n\r\n" + bytes(1 << 16))
            reply = sock.recv(65536)
            elapsed = time.perf_counter() - started
        assert reply.startswith(b"HTTP/1.1 413") and elapsed < 1.0, (reply[:100], elapsed)
    assert "contract v1" in log_path.read_text()
