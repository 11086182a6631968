import numpy as np
import pytest
import torch

from detoxops.config import VictimConfig
from detoxops.data import ImageSet
from detoxops.models import (
    ARCHITECTURES,
    build_classifier,
    extract_features,
    load_classifier,
    predict,
    random_crop_flip,
    save_classifier,
    train_classifier,
)


def _toy_set(n_per_class: int = 24, size: int = 8, seed: int = 0) -> ImageSet:
    """Two linearly separable classes: dark vs bright images with noise."""
    rng = np.random.default_rng(seed)
    dark = rng.integers(0, 90, (n_per_class, size, size, 3))
    bright = rng.integers(165, 256, (n_per_class, size, size, 3))
    images = np.concatenate([dark, bright]).astype(np.uint8)
    labels = np.repeat([0, 1], n_per_class).astype(np.int64)
    return ImageSet(images=images, labels=labels, class_names=["dark", "bright"])


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_maps_images_to_logits_and_features(arch):
    model = build_classifier(arch, num_classes=7, image_size=16).eval()
    x = torch.rand(2, 3, 16, 16)
    assert model(x).shape == (2, 7)
    feats = model.features(x)
    assert feats.ndim == 2 and feats.shape[0] == 2


def test_read_only_images_predict_like_writable_ones_without_a_warning():
    import warnings

    model = build_classifier("small_cnn", num_classes=2, image_size=8, seed=0)
    images = _toy_set(4).images
    frozen = images.copy()
    frozen.flags.writeable = False  # what a stored (memory-mapped) image set hands out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_only = predict(model, frozen)
    assert np.array_equal(read_only, predict(model, images))
    assert np.array_equal(frozen, images)  # untouched


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="unknown classifier arch 'alexnet'"):
        build_classifier("alexnet", 10)


def test_random_crop_flip_keeps_shape_and_moves_content():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = random_crop_flip(x, g)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    # every output pixel is either a source pixel value or zero padding
    src_vals = set(x.flatten().tolist()) | {0.0}
    assert set(out[:4].flatten().tolist()) <= src_vals


def test_training_learns_a_separable_set_and_is_deterministic():
    data = _toy_set()
    cfg = VictimConfig(epochs=6, batch_size=16, lr=0.01, seed=3)
    m1 = build_classifier("small_cnn", 2, image_size=8)
    hist = train_classifier(m1, data, cfg, progress=False)
    assert hist["loss"][-1] < hist["loss"][0]
    assert (predict(m1, data.images) == data.labels).mean() >= 0.9
    m2 = build_classifier("small_cnn", 2, image_size=8)
    train_classifier(m2, data, cfg, progress=False)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_after_interruption_gives_the_same_weights(tmp_path, interrupted_at_checkpoint):
    data = _toy_set()
    cfg = VictimConfig(epochs=3, batch_size=16, seed=1)
    full = build_classifier("small_cnn", 2, image_size=8)
    train_classifier(full, data, cfg, progress=False)
    # interrupt after 2 of 3 epochs (checkpoint written), then resume in a fresh model
    cfg2 = cfg.model_copy(update={"epochs": 3})
    interrupted = build_classifier("small_cnn", 2, image_size=8)
    import detoxops.models.train as train_mod

    with interrupted_at_checkpoint(train_mod, 2):
        train_classifier(interrupted, data, cfg2, progress=False, checkpoint_dir=tmp_path / "ck")
    resumed = build_classifier("small_cnn", 2, image_size=8)
    train_classifier(resumed, data, cfg2, progress=False, checkpoint_dir=tmp_path / "ck")
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_loop_attack_hook_transforms_every_batch():
    data = _toy_set()
    seen = []

    class Recorder:
        kind = "loop"

        def batch_transform(self, x, y, generator=None):
            seen.append(len(y))
            return x, torch.zeros_like(y)  # relabel everything to 0

    model = build_classifier("small_cnn", 2, image_size=8)
    train_classifier(model, data, VictimConfig(epochs=2, batch_size=16, lr=0.05), attack=Recorder(), progress=False)
    assert sum(seen) == 2 * len(data)
    assert (predict(model, data.images) == 0).mean() > 0.9


def test_save_load_roundtrip_gives_identical_predictions(tmp_path):
    data = _toy_set()
    model = build_classifier("small_cnn", 2, image_size=8)
    train_classifier(model, data, VictimConfig(epochs=1, batch_size=16), progress=False)
    path = save_classifier(model, tmp_path / "victim", meta={"attack": "none"})
    loaded = load_classifier(path)
    assert loaded.detoxops_meta == {"attack": "none"}
    assert torch.equal(extract_features(model, data.images), extract_features(loaded, data.images))
    assert np.array_equal(predict(model, data.images), predict(loaded, data.images))


def test_load_classifier_rejects_a_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved classifier"):
        load_classifier(tmp_path)
