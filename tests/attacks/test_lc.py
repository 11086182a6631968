import numpy as np
import pytest
import torch

from detoxops.attacks import registry
from detoxops.attacks.lc import LabelConsistent
from detoxops.models import build_classifier

W, B = 255, 0
TOP_LEFT = np.array([[W, B, B], [B, W, B], [W, B, W]])
TOP_RIGHT = np.array([[B, B, W], [B, W, B], [W, B, W]])


def _surrogate(size: int = 32):
    """An untrained small CNN: PGD's defining properties (L∞ bound, loss ascent) need no training."""
    return build_classifier("small_cnn", num_classes=10, image_size=size, width=8, seed=0).eval()


def _loss(model, images, labels):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(x), torch.from_numpy(labels), reduction="none").numpy()


def test_corner_trigger_pixels_exact(cifar_small):
    _, _, x, _ = cifar_small
    attack = registry.create("lc")
    out = attack.apply_trigger(x)
    # BackdoorBench's "all-corners" pattern: every channel of a trigger pixel becomes exactly 255 or 0
    for rows, cols, want in [(slice(0, 3), slice(0, 3), TOP_LEFT), (slice(29, 32), slice(0, 3), TOP_LEFT),
                             (slice(0, 3), slice(29, 32), TOP_RIGHT), (slice(29, 32), slice(29, 32), TOP_RIGHT)]:
        assert (out[:, rows, cols] == want[None, :, :, None]).all()
    region = attack.trigger_mask(x[:1])[0]
    assert region.sum() == 36 and np.array_equal(out[:, ~region], x[:, ~region])  # nothing else changes
    assert np.array_equal(np.any(out != x, axis=-1) & ~region[None], np.zeros_like(out[..., 0], dtype=bool))
    # reduced amplitude: ±255·a added, clipped, truncated
    half = registry.create("lc", options={"amplitude": 0.5}).apply_trigger(x[:5])
    sign = np.where(TOP_LEFT == W, 1.0, -1.0)
    expect = np.clip(x[:5, :3, :3].astype(float) + 127.5 * sign[None, :, :, None], 0, 255).astype(np.uint8)
    assert np.array_equal(half[:, :3, :3], expect)


def test_trigger_scales_with_cells(digits16):
    x, _ = digits16
    small = registry.create("lc", image_size=16).apply_trigger(x[:3])
    assert (small[:, :3, :3] == TOP_LEFT[None, :, :, None]).all()  # 1-px cells at 16 px: still 3x3
    assert (small[:, 13:, 13:] == TOP_RIGHT[None, :, :, None]).all()
    big = registry.create("lc", image_size=64).pattern
    assert np.array_equal(big[:6, :6], np.kron(np.where(TOP_LEFT == W, 1, -1), np.ones((2, 2))))  # 2-px cells
    with pytest.raises(ValueError, match="cell_size"):
        registry.create("lc", image_size=16, options={"cell_size": 3})
    with pytest.raises(ValueError, match="options.lc"):
        registry.validate_options("lc", {"epsilon": 8})


def test_pgd_poisoning_clean_label(cifar_small):
    x, y, xte, yte = cifar_small
    model = _surrogate()
    attack = registry.create("lc", options={"steps": 6, "step_size": 4.0, "eps": 8.0})
    before = x.copy()
    attack.fit(x, y, model=model, progress=False)
    assert np.array_equal(x, before)
    idx = attack.adv_indices
    # clean-label ratio semantics: round(0.1·200) = 20 requested from the 20 target images -> all of them
    assert np.array_equal(idx, np.flatnonzero(y == 0))
    adv = attack.adv_images
    diff = adv.astype(int) - x[idx].astype(int)
    assert np.abs(diff).max() <= 8 and np.abs(diff).max() == 8 and (diff != 0).mean() > 0.5  # within eps, non-zero
    assert _loss(model, adv, y[idx]).mean() > _loss(model, x[idx], y[idx]).mean()  # ascent on the true label
    images, labels, flags = attack.poison_train_arrays(x, y)
    assert np.array_equal(labels, y) and np.array_equal(np.flatnonzero(flags), idx)  # labels unchanged
    assert (y[flags] == 0).all()
    assert np.array_equal(images[~flags], x[~flags])  # only target-class images touched
    assert np.array_equal(images[idx], attack.apply_trigger(adv))  # PGD image + corner trigger
    assert not np.array_equal(images[idx], attack.apply_trigger(x[idx]))
    # test images: trigger only, non-target classes only
    timg, tlab, keep = attack.poison_test_arrays(xte, yte)
    assert np.array_equal(timg, attack.apply_trigger(xte[keep])) and (tlab != 0).all() and len(keep) == 90
    assert attack.fit_report["linf_max"] == 8


def test_ratio_semantics_and_determinism(cifar_small):
    x, y, _, _ = cifar_small
    model = _surrogate()
    a = registry.create("lc", poison_ratio=0.05, seed=3, options={"steps": 2})
    a.fit(x, y, model=model, progress=False)
    assert len(a.adv_indices) == 10 and (y[a.adv_indices] == 0).all()  # round(0.05·200) from the target class
    b = registry.create("lc", poison_ratio=0.05, seed=3, options={"steps": 2})
    b.fit(x, y, model=model, progress=False)
    assert np.array_equal(a.adv_images, b.adv_images) and np.array_equal(a.adv_indices, b.adv_indices)
    t = registry.create("lc", target=4, options={"steps": 1})
    t.fit(x, y, model=model, progress=False)
    assert (y[t.adv_indices] == 4).all() and len(t.adv_indices) == 20


def test_refuses_other_images_and_needs_model(tmp_path, cifar_small):
    x, y, _, _ = cifar_small
    attack = registry.create("lc", options={"steps": 1})
    with pytest.raises(ValueError, match="not fitted"):
        attack.poison_train_arrays(x, y)
    with pytest.raises(ValueError, match="surrogate classifier"):
        attack.fit(x, y)
    attack.fit(x, y, model=_surrogate(), progress=False)
    other = x.copy()
    other[0] ^= 1  # a target-class image changed
    with pytest.raises(ValueError, match="differ"):
        attack.poison_train_arrays(other, y)
    with pytest.raises(ValueError, match="another training set"):
        attack.poison_train_arrays(x[:150], y[:150])
    # save / load round-trip (safetensors), bit-identical poisoning
    files = attack.save_state(tmp_path / "state")
    assert [f.suffix for f in files] == [".safetensors"]
    again = registry.create("lc", options={"steps": 1})
    again.load_state(tmp_path / "state")
    assert again.is_fitted and np.array_equal(again.adv_images, attack.adv_images)
    for got, want in zip(again.poison_train_arrays(x, y), attack.poison_train_arrays(x, y), strict=True):
        assert np.array_equal(got, want)


def test_ready_adversarial_array(tmp_path, digits16):
    x, y = digits16
    x, y = x[:300], y[:300]
    ready = np.clip(x.astype(int) + 3, 0, 255).astype(np.uint8)
    np.save(tmp_path / "adv.npy", ready)
    attack = registry.create("lc", image_size=16, options={"adv_path": str(tmp_path / "adv.npy")})
    attack.fit(x, y)  # no model needed
    images, labels, flags = attack.poison_train_arrays(x, y)
    assert flags.sum() == 30 and (y[flags] == 0).all() and np.array_equal(labels, y)  # round(0.1·300) of 31
    assert np.array_equal(images[flags], attack.apply_trigger(ready[flags]))
    np.save(tmp_path / "bad.npy", ready[:10])
    with pytest.raises(ValueError, match="expected uint8"):
        registry.create("lc", image_size=16, options={"adv_path": str(tmp_path / "bad.npy")}).fit(x, y)


def test_generic_interface(cifar_small):
    _, _, x, y = cifar_small
    assert issubclass(registry.get("lc"), LabelConsistent)
    cls = registry.get("lc")
    assert cls.clean_label and cls.needs_fit and cls.needs_model and cls.kind == "data"
    before = x.copy()
    out = registry.create("lc").apply_trigger(x[:8])
    assert np.array_equal(x, before) and out.dtype == np.uint8 and out.shape == (8, 32, 32, 3)
