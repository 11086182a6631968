import numpy as np

from detoxops.attacks import registry


def test_amplitude_and_frequency_on_cifar(cifar_small):
    _, _, x, _ = cifar_small
    p = registry.create("sig").apply_trigger(x)
    wave = 40 * np.sin(2 * np.pi * np.arange(32) * 6 / 32)
    xf = x.astype(np.float64)
    expected = np.clip(xf + wave[None, None, :, None], 0, 255).astype(np.uint8)
    assert np.array_equal(p, expected)
    d = p.astype(np.float64) - xf
    free = (xf + wave[None, None, :, None] >= 0) & (xf + wave[None, None, :, None] <= 255)
    # where nothing clips the change is the sinusoid minus < 1 level of truncation
    err = (d - wave[None, None, :, None])[free]
    assert err.max() <= 1e-9 and err.min() > -1
    # spectrum of the mean column profile: one peak at 6 cycles with amplitude ~40
    profile = d.mean(axis=(0, 1, 3))
    spec = np.abs(np.fft.rfft(profile)) * 2 / 32
    assert int(np.argmax(spec[1:]) + 1) == 6
    assert 35 < spec[6] < 41
    assert np.sort(spec[1:])[-2] < 5


def test_clean_label_takes_every_target_image(cifar_small):
    x, y, _, _ = cifar_small  # balanced: 20 per class, 200 images
    attack = registry.create("sig")
    assert attack.clean_label
    px, py, flags = attack.poison_train_arrays(x, y)
    # round(0.1 * 200) = 20 requested from the 20 target images: all of class 0, nothing else
    assert np.array_equal(flags, y == 0)
    assert np.array_equal(py, y)  # labels untouched
    assert np.array_equal(px[~flags], x[~flags]) and not np.array_equal(px[flags], x[flags])


def test_clean_label_ratio_is_relative_to_whole_set(cifar_small):
    x, y, _, _ = cifar_small
    flags = registry.create("sig", poison_ratio=0.05).poison_train_arrays(x, y)[2]
    assert flags.sum() == 10 and (y[flags] == 0).all()
