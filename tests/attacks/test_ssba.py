import numpy as np
import pytest

from detoxops.attacks import registry
from detoxops.attacks.ssba import fingerprint_bits

TINY = {"steps": 200, "bits": 8, "width": 8, "batch_size": 32}


@pytest.fixture(scope="module")
def fitted(digits16):
    x, y = digits16
    attack = registry.create("ssba", image_size=16, seed=0, options=TINY)
    attack.fit(x[:1000], y[:1000], progress=False)
    return attack


def test_encoder_hides_a_decodable_fingerprint(fitted, digits16):
    x, _ = digits16
    held_out = x[1000:1200]
    p = fitted.apply_trigger(held_out)
    # bounded, sample-specific change (residual mode: at most 0.1 * 255 per pixel, plus truncation)
    diff = p.astype(int) - held_out
    assert np.abs(diff).max() <= 26 and np.abs(diff).mean() > 0.5
    assert not np.array_equal(diff[0], diff[1])
    # the decoder reads the fixed fingerprint back from poisoned images, not from clean ones
    acc_poisoned = (fitted.decode_bits(p) == fitted.fingerprint).mean()
    acc_clean = (fitted.decode_bits(held_out) == fitted.fingerprint).mean()
    assert acc_poisoned > 0.95 and acc_clean < 0.8
    assert fitted.fit_report["bit_acc_reached_0.9_at"] is not None


def test_deterministic_and_state_round_trip(fitted, digits16, tmp_path):
    x, y = digits16
    again = registry.create("ssba", image_size=16, seed=0, options=TINY)
    again.fit(x[:1000], y[:1000], progress=False)
    assert np.array_equal(again.apply_trigger(x[:20]), fitted.apply_trigger(x[:20]))
    fitted.save_state(tmp_path)
    loaded = registry.create("ssba", image_size=16, options=TINY | {"encoder_path": str(tmp_path)})
    assert loaded.is_fitted
    assert np.array_equal(loaded.apply_trigger(x[:20]), fitted.apply_trigger(x[:20]))
    assert (tmp_path / "ssba_stegastamp.safetensors").is_file()


def test_unfitted_and_bad_weights(tmp_path, digits16):
    x, _ = digits16
    attack = registry.create("ssba", image_size=16, options=TINY)
    with pytest.raises(ValueError, match="no encoder"):
        attack.apply_trigger(x[:2])
    with pytest.raises(FileNotFoundError):
        registry.create("ssba", image_size=16, options={"encoder_path": str(tmp_path / "missing")})


def test_fingerprint_is_fixed():
    a, b = fingerprint_bits("stega!!", 100), fingerprint_bits("stega!!", 100)
    assert np.array_equal(a, b) and a.shape == (100,) and 30 < a.sum() < 70
    assert not np.array_equal(a, fingerprint_bits("other", 100))
