import numpy as np
import pytest
import torch
from torch import nn

from detoxops.attacks import registry
from detoxops.attacks.lf import low_frequency_energy, lowpass


def _tiny_classifier(x, y, seed=0, steps=60):
    """A small linear softmax classifier on [0, 1] NCHW, trained a few full-batch steps (deterministic)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].size, 10))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


def test_fit_gives_a_low_pass_targeted_pattern(cifar_small):
    x, y, xte, yte = cifar_small
    model = _tiny_classifier(x, y)
    attack = registry.create("lf", options={"max_passes": 15})
    attack.fit(x, y, model=model, progress=False)
    p = attack.pattern
    assert p.shape == (32, 32, 3) and p.dtype == np.uint8
    assert p.min() == 0 and p.max() in (50, 51)  # min-max normalised to [0, 0.2], truncated to uint8
    # low-pass: almost all spectral energy below 4 cycles per image (BackdoorBench's pattern: 99 % in 8x8)
    assert low_frequency_energy(p, 4) > 0.97
    # the unsmoothed sign gradient it is built from is broadband
    xt = torch.from_numpy(x[:50]).permute(0, 3, 1, 2).float().requires_grad_(True)
    nn.functional.cross_entropy(model(xt / 255), torch.zeros(50, dtype=torch.long)).backward()
    raw = xt.grad.sum(0).sign().permute(1, 2, 0).numpy() + 1
    assert low_frequency_energy(raw, 4) < 0.9
    # targeted: adding the pattern moves non-target test images towards class 0
    keep = yte != 0
    with torch.no_grad():
        before = torch.softmax(model(torch.from_numpy(xte[keep]).permute(0, 3, 1, 2).float() / 255), 1)[:, 0]
        trig = attack.apply_trigger(xte[keep])
        after = torch.softmax(model(torch.from_numpy(trig).permute(0, 3, 1, 2).float() / 255), 1)[:, 0]
    assert after.mean() > before.mean()
    assert np.array_equal(trig, np.clip(xte[keep].astype(int) + p, 0, 255).astype(np.uint8))
    assert attack.fit_report["passes"] >= 1


def test_lowpass_filter_attenuates_high_frequencies():
    stripes = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    stripes[0, 0, ::2, :] = 1.0  # DC 0.5 + a Nyquist-frequency component of amplitude 0.5
    flat = torch.full_like(stripes, 0.5)
    out, dc = lowpass(stripes, 30, 6.0), lowpass(flat, 30, 6.0)
    assert out.shape == stripes.shape
    # the filter removes the stripes (amplitude 0.5): what is left is the filtered DC, up to a small
    # zero-padding edge effect (the window sees an odd number of stripes near the border)
    assert (out - dc).abs().max() < 0.05 * 0.5
    wave = torch.cos(torch.arange(32, dtype=torch.float64) * 2 * torch.pi / 32).expand(1, 1, 32, 32)
    assert (lowpass(wave, 30, 6.0) - lowpass(torch.zeros_like(wave), 30, 6.0)).abs().max() > 0.2  # 1 cycle passes


def test_needs_model_or_pattern(tmp_path, digits16):
    x, y = digits16
    attack = registry.create("lf", image_size=16)
    with pytest.raises(ValueError, match="surrogate classifier"):
        attack.fit(x, y)
    with pytest.raises(ValueError, match="no perturbation"):
        attack.apply_trigger(x[:2])
    pattern = np.zeros((16, 16, 3), dtype=np.uint8)
    pattern[..., 2] = 51
    np.save(tmp_path / "p.npy", pattern)
    ready = registry.create("lf", image_size=16, options={"pattern_path": str(tmp_path / "p.npy")})
    ready.fit(x, y)  # nothing to fit
    out = ready.apply_trigger(x[:4])
    assert np.array_equal(out[..., 2], np.clip(x[:4, ..., 2].astype(int) + 51, 0, 255))
    ready.save_state(tmp_path / "state")
    again = registry.create("lf", image_size=16)
    again.load_state(tmp_path / "state")
    assert np.array_equal(again.pattern, pattern)
    np.save(tmp_path / "bad.npy", np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="shape"):
        registry.create("lf", image_size=16, options={"pattern_path": str(tmp_path / "bad.npy")})
