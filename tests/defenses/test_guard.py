"""Detoxifier: callable, torch module and HTTP (npy and JSON) classifiers, batching, defenses applied."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from detoxops.defenses.base import DefenseOutput
from detoxops.defenses.guard import Detoxifier, HttpClassifier
from detoxops.defenses.transforms import Blur
from detoxops.serving import GuardHTTPError


def brightness_labels(images_u8: np.ndarray) -> np.ndarray:
    """A stand-in black box: label = mean brightness bucket (0..3)."""
    return (images_u8.reshape(len(images_u8), -1).mean(axis=1) // 64).astype(np.int64)


def _images(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)


class Darken:
    """A defense with a known effect: halves every pixel."""

    name = "darken"

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, x01, generator=None):
        self.batch_sizes.append(len(x01))
        return DefenseOutput(images=x01 / 2)


def test_callable_classifier_sees_detoxified_batches():
    images = np.full((7, 8, 8, 3), 200, dtype=np.uint8)
    defense = Darken()
    guard = Detoxifier(brightness_labels, defense, batch_size=3)
    labels = guard.predict(images)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.full(7, 100 // 64))  # darkened 200 -> 100 -> bucket 1
    assert defense.batch_sizes == [3, 3, 1]
    np.testing.assert_array_equal(guard.detoxify(images), np.full_like(images, 100))
    # no defense: labels of the raw images
    np.testing.assert_array_equal(Detoxifier(brightness_labels).predict(images), np.full(7, 200 // 64))


def test_module_classifier_argmax_and_memmap(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    images = _images(9)
    path = tmp_path / "images.npy"
    np.save(path, images)
    mm = np.load(path, mmap_mode="r")
    got = Detoxifier(model, Blur(3, 1.0), batch_size=4).predict(mm)
    with torch.no_grad():
        from detoxops.data import from_tensor, to_tensor

        blurred = from_tensor(Blur(3, 1.0)(to_tensor(images)).images)
        want = model(to_tensor(blurred)).argmax(1).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.fixture()
def endpoint():
    """The project's guard server (detoxops.serving) around the brightness black box, on loopback."""
    from detoxops.config import ServeConfig
    from detoxops.serving import make_server

    server = make_server(brightness_labels, ServeConfig(max_batch=4), image_size=8, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.url
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("wire", ["npy", "json"])
def test_http_endpoint_matches_local_callable(endpoint, wire):
    images = _images(11, seed=1)
    remote = Detoxifier(endpoint, Darken(), batch_size=4, http_wire=wire).predict(images)
    local = Detoxifier(brightness_labels, Darken(), batch_size=4).predict(images)
    np.testing.assert_array_equal(remote, local)
    # a guard batch larger than the server's max_batch is split by the client (max_batch=4 on the server)
    split = Detoxifier(HttpClassifier(endpoint, wire=wire, max_batch=4), Darken(), batch_size=11).predict(images)
    np.testing.assert_array_equal(split, local)


def test_http_errors_are_clear(endpoint):
    with pytest.raises(GuardHTTPError, match="HTTP 413.*max_batch = 4") as info:
        HttpClassifier(endpoint)(_images(5))
    assert info.value.status == 413 and info.value.code == "batch_too_large"
    with pytest.raises(GuardHTTPError, match="HTTP 400.*takes \\(N, 8, 8, 3\\)"):
        HttpClassifier(endpoint)(np.zeros((2, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(GuardHTTPError, match="unreachable"):
        HttpClassifier("http://127.0.0.1:9/x", timeout=2)(_images(2))
    with pytest.raises(ValueError, match="http://"):
        HttpClassifier("ftp://host/x")
    with pytest.raises(ValueError, match="uint8"):
        HttpClassifier(endpoint)(_images(2).astype(np.float32))


def test_bad_inputs():
    guard = Detoxifier(brightness_labels)
    with pytest.raises(ValueError, match="uint8"):
        guard.predict(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="expected 2 labels"):
        Detoxifier(lambda x: np.zeros(3, dtype=np.int64)).predict(_images(2))
    with pytest.raises(ValueError, match="batch_size"):
        Detoxifier(brightness_labels, batch_size=0)


def test_guard_from_params_lets_the_patch_repair_confirm_with_the_guarded_classifier():
    from detoxops.config import PatchRepairConfig, SampDetoxConfig
    from detoxops.diffusion import load_purifier
    from detoxops.diffusion.unet import shipped_purifier_dir

    seen = []

    def black_box(images_u8):
        seen.append(len(images_u8))
        return brightness_labels(images_u8)

    patch = PatchRepairConfig(stride=500, repair_stride=500, confirm="label", pixel_threshold=0.5).model_copy(
        update={"gate_threshold": -1.0})  # every image gated: 2 confirmation queries each
    cfg = SampDetoxConfig(profile="repair", sampler="ddim", patch=patch, batch_size=4)
    guard = Detoxifier.from_params(black_box, load_purifier(shipped_purifier_dir("digits-16")), cfg)
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    labels = guard.predict(images)
    assert seen == [6, 3] and labels.shape == (3,)  # the confirmation (input + repair), then the prediction
    assert guard.defense.cfg.profile == "repair"
