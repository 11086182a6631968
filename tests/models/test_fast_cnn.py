"""airbench94 recipe (fast_cnn) on tiny data: the loss falls, the whitening layer stays frozen and whitens,
TTA is exact on flip-invariant inputs, training resumes to the same weights, and the saved model reloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detoxops.config import AirbenchConfig, ConfigError, VictimConfig, load_params
from detoxops.data import ImageSet
from detoxops.models import (
    build_classifier,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
    tta_logits,
)
from detoxops.models.fast_train import alternating_flip, random_translate, triangular_lr

TINY = dict(epochs=10, batch_size=16, widths=[8, 16, 16], whiten_images=64)


def _toy_set(n_per_class: int = 32, size: int = 16, seed: int = 0) -> ImageSet:
    """Two classes a small convnet separates in a few steps: a bright or a dark square on noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 90, (2 * n_per_class, size, size, 3), dtype=np.uint8)
    labels = np.repeat([0, 1], n_per_class).astype(np.int64)
    images[labels == 0, 4:12, 4:12] = 230
    return ImageSet(images, labels, ["bright", "dark"])


def _cfg(**airbench) -> VictimConfig:
    return VictimConfig(arch="fast_cnn", seed=0, airbench=AirbenchConfig(**{**TINY, **airbench}))


def _model(cfg: VictimConfig, size: int = 16):
    return build_classifier("fast_cnn", 2, 3, size, seed=cfg.seed, widths=cfg.airbench.widths)


def test_loss_falls_and_whitening_stays_frozen():
    data, cfg = _toy_set(), _cfg()
    model = _model(cfg)
    history = train_classifier(model, data, cfg, progress=False)
    assert history["loss"][-1] < 0.95 * history["loss"][0]
    assert (predict(model, data.images) == data.labels).mean() >= 0.95
    whiten = model.whiten.weight.detach().clone()
    train_classifier(model, data, cfg, progress=False, epochs=1, lr=cfg.lr)  # fine-tune keeps the layer
    assert torch.equal(model.whiten.weight, whiten)
    assert not model.whiten.weight.requires_grad


def test_whitening_sample_is_drawn_from_every_class_of_a_class_sorted_set(monkeypatch):
    """Stored sets are sorted by class: the whitening statistics come from a seeded random sample, not from the
    first images (here the first 16 of 64 are all class 0)."""
    from detoxops.models.fast_cnn import FastCNN

    data, cfg = _toy_set(), _cfg(whiten_images=16, epochs=1)
    seen = []
    monkeypatch.setattr(FastCNN, "init_whitening", lambda self, x, **k: seen.append(x.clone()))
    for _ in range(2):
        train_classifier(_model(cfg), data, cfg, progress=False)
    bright = (seen[0][:, :, 4:12, 4:12] > 0.85).flatten(1).all(1)  # class 0's bright square
    assert len(seen[0]) == 16 and 0 < int(bright.sum()) < 16
    assert torch.equal(seen[0], seen[1])  # the same seed draws the same sample


def test_whitening_layer_whitens_patches():
    model = build_classifier("fast_cnn", 10, 3, 16, widths=[8, 8, 8])
    x = torch.rand(64, 3, 16, 16) * torch.linspace(0.2, 1, 16)  # correlated, non-uniform patches
    model.init_whitening(x, eps=0.0)
    with torch.no_grad():
        out = model.whiten(model.normalise(x)) - model.whiten.bias.view(1, -1, 1, 1)
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = half.T @ half / len(half)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(out[:, 12:], -out[:, :12])


def test_tta_changes_nothing_for_flip_invariant_input_on_level_1():
    model = build_classifier("fast_cnn", 10, 3, 16, widths=[8, 8, 8]).eval()
    model.init_whitening(torch.rand(16, 3, 16, 16))
    x = torch.rand(4, 3, 16, 8)
    x = torch.cat([x, x.flip(-1)], dim=-1)  # mirror-symmetric images
    with torch.no_grad():
        plain, mirrored = model(x), tta_logits(model, x, 1)
        assert torch.allclose(plain, mirrored, atol=1e-5)
        constant = torch.full((2, 3, 16, 16), 0.4)  # invariant to flips and shifts: every level is the plain net
        assert torch.allclose(model(constant), tta_logits(model, constant, 2), atol=1e-5)
    with pytest.raises(ValueError, match="tta level"):
        tta_logits(model, x, 3)


def test_resume_gives_the_same_weights(tmp_path):
    data, cfg = _toy_set(), _cfg(epochs=3)
    full = _model(cfg)
    train_classifier(full, data, cfg, progress=False)
    interrupted = _model(cfg)
    train_classifier(interrupted, data, cfg, progress=False, checkpoint_dir=tmp_path / "ckpt")
    # a second model picks up the finished checkpoint and must end where the uninterrupted one did
    resumed = _model(cfg)
    train_classifier(resumed, data, cfg, progress=False, checkpoint_dir=tmp_path / "ckpt")
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_mid_run(tmp_path, interrupted_at_checkpoint):
    data = _toy_set()
    cfg3 = _cfg(epochs=3)
    full = _model(cfg3)
    train_classifier(full, data, cfg3, progress=False)
    # stop after one epoch: the process dies right after the first epoch's checkpoint of a 3-epoch run
    part = _model(cfg3)
    ckpt = tmp_path / "ckpt"
    from detoxops.models import fast_train

    with interrupted_at_checkpoint(fast_train, 1) as calls:
        train_classifier(part, data, cfg3, progress=False, checkpoint_dir=ckpt)
    assert calls["n"] == 1
    resumed = _model(cfg3)
    train_classifier(resumed, data, cfg3, progress=False, checkpoint_dir=ckpt)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_save_load_round_trip(tmp_path):
    data, cfg = _toy_set(), _cfg(epochs=1)
    model = _model(cfg)
    train_classifier(model, data, cfg, progress=False)
    save_classifier(model, tmp_path / "victim")
    loaded = load_classifier(tmp_path / "victim")
    x = torch.rand(3, 3, 16, 16)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with torch.no_grad():  # channels_last (trained) vs contiguous (loaded) memory order: same maths, float rounding
        assert torch.allclose(model.eval()(x), loaded(x), atol=1e-5)


def test_augmentations():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    base = torch.tensor([True, False])
    even, odd = alternating_flip(x, base, 0), alternating_flip(x, base, 1)
    assert torch.equal(even[0], x[0].flip(-1)) and torch.equal(even[1], x[1])
    assert torch.equal(odd[0], x[0]) and torch.equal(odd[1], x[1].flip(-1))
    g = torch.Generator().manual_seed(0)
    moved = random_translate(x, 1, g)
    assert moved.shape == x.shape
    # every output is a 4x4 window of the reflect-padded input
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    for i in range(2):
        windows = [padded[i, :, dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(moved[i], w) for w in windows)
    assert triangular_lr(0, 100) == pytest.approx(0.2)
    assert triangular_lr(23, 100) == pytest.approx(1.0)
    assert triangular_lr(100, 100) == pytest.approx(0.07)


def test_config_rules():
    assert VictimConfig(arch="fast_cnn").training_recipe == "airbench"
    assert VictimConfig(arch="small_cnn").training_recipe == "backdoorbench"
    with pytest.raises(ConfigError, match="airbench"):
        load_params(None, ["victim.arch=small_cnn", "victim.recipe=airbench"])


def test_loop_attack_transforms_every_training_batch():
    """WaNet's hook gets every clean shuffled batch, un-augmented (WaNet brings its own augmentation), with the
    images' own labels, once per training step."""
    from detoxops.attacks import registry

    data, cfg = _toy_set(), _cfg(epochs=2)
    attack = registry.create("wanet", target=1, poison_ratio=0.25, image_size=16, num_classes=2)
    seen = []
    real = attack.batch_transform

    def spy(x, y, generator=None):
        seen.append((x.clone(), y.clone()))
        return real(x, y, generator=generator)

    attack.batch_transform = spy
    train_classifier(_model(cfg), data, cfg, attack=attack, progress=False)
    assert len(seen) == 2 * (len(data) // 16)
    originals = torch.from_numpy(np.asarray(data.images)).permute(0, 3, 1, 2).float() / 255
    for x, y in seen:  # each batch is a set of untouched training images with their own labels
        match = (x[:, None] - originals[None]).abs().flatten(2).amax(-1) < 1e-6
        assert bool(match.any(1).all())
        assert torch.equal(y, torch.from_numpy(data.labels)[match.float().argmax(1)])


def test_checkpoint_of_another_run_is_not_resumed(tmp_path):
    data, cfg = _toy_set(), _cfg(epochs=1)
    ckpt = tmp_path / "ckpt"
    train_classifier(_model(cfg), data, cfg, progress=False, checkpoint_dir=ckpt)
    other = _cfg(epochs=1, label_smoothing=0.1)  # another recipe: the old checkpoint must not be picked up
    fresh, reused = _model(other), _model(other)
    train_classifier(fresh, data, other, progress=False)
    with pytest.warns(UserWarning, match="different run"):
        train_classifier(reused, data, other, progress=False, checkpoint_dir=ckpt)
    for a, b in zip(fresh.state_dict().values(), reused.state_dict().values(), strict=True):
        assert torch.equal(a, b)
