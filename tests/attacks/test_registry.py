import numpy as np
import pytest

from detoxops.attacks import registry
from detoxops.attacks.base import Attack, truncate_float_pipeline, truncate_to_uint8

ALL_13 = {
    "badnets", "blended", "sig", "lc", "trojannn", "inputaware", "lf",
    "wanet", "ssba", "bpp", "ftrojan", "lira", "refool",
}
# attacks whose trigger needs no fitting (the generic checks below run them unfitted)
UNFITTED = {"badnets", "blended", "sig", "lc", "wanet", "bpp", "ftrojan", "refool"}


def test_all_13_attacks_registered_with_consistent_metadata():
    names = set(registry.available())
    assert names == ALL_13 | {"badnets_random"}  # + detoxops's adaptive check
    for name in names:
        cls = registry.get(name)
        assert issubclass(cls, Attack) and cls.name == name and cls.kind in ("data", "loop")
    assert registry.get("sig").clean_label and not registry.get("badnets").clean_label
    assert registry.get("lc").clean_label
    assert {n for n in names if registry.get(n).kind == "loop"} == {"wanet", "bpp", "inputaware", "lira"}


def test_unknown_attack_and_bad_options():
    with pytest.raises(KeyError, match="unknown attack"):
        registry.get("nope")
    with pytest.raises(ValueError, match="options.badnets"):
        registry.validate_options("badnets", {"patch_sise": 3})
    with pytest.raises(ValueError, match="out of range"):
        registry.create("badnets", target=10, num_classes=10)
    with pytest.raises(ValueError, match="poison_ratio"):
        registry.create("badnets", poison_ratio=1.5)


def test_params_options_are_validated():
    from detoxops.config import ConfigError, load_params

    params = load_params(None, ["attack.name=blended", "attack.options={blended: {alpha: 0.3}}"])
    assert params.attack.options["blended"]["alpha"] == 0.3
    with pytest.raises(ConfigError):
        load_params(None, ["attack.options={blended: {alfa: 0.3}}"])


def test_uint8_truncation():
    assert truncate_to_uint8(np.array([-3.0, 0.99, 1.5, 254.9999, 255.0, 300.0])).tolist() == [0, 0, 1, 254, 255, 255]
    # a float pipeline's round-off just below an integer keeps the integer; real fractions still truncate
    assert truncate_float_pipeline(np.array([56.99999999999, 56.9, 57.5])).tolist() == [57, 56, 57]


@pytest.mark.parametrize("name", sorted(UNFITTED))
def test_no_input_mutation_and_dtype(cifar_small, name):
    _, _, x, _ = cifar_small
    before = x.copy()
    p = registry.create(name).apply_trigger(x[:8])
    assert np.array_equal(x, before)
    assert p.dtype == np.uint8 and p.shape == (8, 32, 32, 3)


@pytest.mark.parametrize("name", sorted(UNFITTED))
def test_test_set_excludes_target_class(cifar_small, name):
    _, _, x, y = cifar_small
    attack = registry.create(name, target=4)
    images, labels, keep = attack.poison_test_arrays(x, y)
    assert (labels != 4).all() and len(keep) == (y != 4).sum() == 90
    assert np.array_equal(labels, y[keep]) and images.shape == (90, 32, 32, 3)


@pytest.mark.parametrize("name", sorted(UNFITTED))
def test_read_only_memmap_input(tmp_path, cifar_small, name):
    import warnings

    _, _, x, _ = cifar_small
    np.save(tmp_path / "x.npy", x[:6])
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")  # how ImageSet.load hands images over
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = registry.create(name).apply_trigger(mapped)
    assert np.array_equal(out, registry.create(name).apply_trigger(x[:6]))
