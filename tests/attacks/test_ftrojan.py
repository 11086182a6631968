import numpy as np
import pytest

from detoxops.attacks import registry
from detoxops.attacks.ftrojan import block_dct, rgb_to_ycrcb, ycrcb_to_rgb


def _dct_ycc(images):
    return block_dct(rgb_to_ycrcb(images).astype(np.float64), images.shape[1])


def test_dct_coefficients_raised_by_magnitude_on_cifar(cifar_small):
    _, _, x, _ = cifar_small
    p = registry.create("ftrojan").apply_trigger(x)
    diff = _dct_ycc(p) - _dct_ycc(x)  # (N, 32, 32, 3) coefficient changes in YCrCb
    mean = diff.mean(axis=0)
    for r, c in [(15, 15), (31, 31)]:
        for ch in (1, 2):  # Cr and Cb get +30, measured back through uint8 RGB (rounding noise < 3)
            assert abs(mean[r, c, ch] - 30) < 3
        assert abs(mean[r, c, 0]) < 3  # Y untouched
    # truncating the inverse DCT (no rounding, as the reference) loses 0.5 level per pixel on average in the
    # modified channels: the DC coefficient (sum / 32) drops by about 16
    assert -17.5 < mean[0, 0, 1] < -14.5 and -17.5 < mean[0, 0, 2] < -14.5
    others = np.ones((32, 32), dtype=bool)
    others[0, 0] = others[15, 15] = others[31, 31] = False
    # everything else moves by a few units at most (truncation harmonics), an order of magnitude below 30
    assert np.abs(mean[others]).max() < 4.5
    # invisible scale, as BackdoorBench's measurement (L-inf ~ 8-9 grey levels, PSNR ~ 41 dB)
    linf = np.abs(p.astype(int) - x).max(axis=(1, 2, 3))
    assert linf.mean() < 12


def test_color_round_trip_is_near_identity(cifar_small):
    _, _, x, _ = cifar_small
    back = ycrcb_to_rgb(rgb_to_ycrcb(x))
    assert np.abs(back.astype(int) - x).max() <= 2


def test_scaling_keeps_pixel_amplitude(digits16):
    x, _ = digits16
    attack = registry.create("ftrojan", image_size=16)
    assert attack.window == 16 and attack.positions == [(7, 7), (15, 15)] and attack.magnitude == 15.0
    p = attack.apply_trigger(x[:50])
    diff = (_dct_ycc(p) - _dct_ycc(x[:50])).mean(axis=0)
    assert abs(diff[7, 7, 1] - 15) < 3 and abs(diff[15, 15, 2] - 15) < 3


def test_bad_positions_rejected():
    with pytest.raises(ValueError, match="outside"):
        registry.create("ftrojan", options={"positions": [(40, 1)]})
