"""detoxops.config: params.yaml → typed objects; bad keys, types and ranges are errors naming the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detoxops.config import (
    ConfigError,
    DataConfig,
    DataElixirConfig,
    Params,
    apply_overrides,
    load_params,
    parse_override,
)

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, raw) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repository_params_load_and_mirror_every_key():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params.data, DataConfig)
    assert params.data.image_size == raw["data"]["image_size"]
    assert params.sampdetox.t1 == raw["sampdetox"]["t1"]
    dumped = params.to_dict()
    for section, values in raw.items():  # every key in params.yaml is a typed field with the same value
        for key, value in values.items():
            assert dumped[section][key] == value, f"{section}.{key}"


def test_defaults_without_a_file():
    params = load_params(None)
    assert params == Params()
    assert params.data.source == "digits" and params.data.color == "rgb"


def test_unknown_key_names_the_dotted_key(tmp_path):
    with pytest.raises(ConfigError, match=r"params\.yaml: sampdetox\.t3: unknown key"):
        load_params(write(tmp_path, {"sampdetox": {"t3": 5}}))
    with pytest.raises(ConfigError, match=r"diffusion\.unet\.channels: unknown key"):
        load_params(write(tmp_path, {"diffusion": {"unet": {"channels": 5}}}))
    with pytest.raises(ConfigError, match=r"bogus: unknown key"):
        load_params(write(tmp_path, {"bogus": {}}))


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"victim\.epochs: Input should be a valid integer"):
        load_params(write(tmp_path, {"victim": {"epochs": "many"}}))
    with pytest.raises(ConfigError, match=r"data\.color: Input should be 'rgb' or 'keep'"):
        load_params(write(tmp_path, {"data": {"color": "cmyk"}}))
    with pytest.raises(ConfigError, match=r"victim: Input should be a valid dictionary"):
        load_params(write(tmp_path, {"victim": 3}))


@pytest.mark.parametrize(
    "override, key, message",
    [
        ("data.test_fraction=1.0", "data.test_fraction", "less than 1"),
        ("data.val_fraction=0", "data.val_fraction", "greater than 0"),
        ("attack.poison_ratio=1.5", "attack.poison_ratio", "less than or equal to 1"),
        ("victim.momentum=1", "victim.momentum", "less than 1"),
        (
            "diffusion.schedule.num_train_timesteps=1",
            "diffusion.schedule.num_train_timesteps",
            "greater than or equal to 2",
        ),
        ("sampdetox.t1=-1", "sampdetox.t1", "greater than or equal to 0"),
    ],
)
def test_out_of_range_names_the_key(override, key, message):
    with pytest.raises(ConfigError, match=rf"{key}: Input should be {message}"):
        load_params(ROOT / "params.yaml", [override])


def test_image_size_out_of_range_names_the_key():
    with pytest.raises(ConfigError, match=r"data\.image_size: .*must be between 4 and 1024 \(or 'auto' / null\), got 2"):
        load_params(ROOT / "params.yaml", ["data.image_size=2"])
    with pytest.raises(ConfigError, match=r"diffusion\.unet\.sample_size: .*at least 4"):
        load_params(ROOT / "params.yaml", ["diffusion.unet.sample_size=2"])


def test_overrides_are_typed_and_nested():
    params = load_params(
        ROOT / "params.yaml",
        [
            "sampdetox.t1=30",
            "data.image_size=null",
            "diffusion.unet.block_out_channels=[8, 16]",
            "victim.augment=false",
        ],
    )
    assert params.sampdetox.t1 == 30
    assert params.data.image_size is None
    assert params.diffusion.unet.block_out_channels == [8, 16]
    assert params.victim.augment is False


def test_parse_override_and_errors():
    assert parse_override("sampdetox.t1=20") == (["sampdetox", "t1"], 20)
    assert parse_override("data.source=../x/y.tar.gz") == (["data", "source"], "../x/y.tar.gz")
    assert parse_override("dataelixir.tau=2.5") == (["dataelixir", "tau"], 2.5)
    assert parse_override("tracking.runs_dir= ") == (["tracking", "runs_dir"], None)
    # DVC renders a null param as Python's None (victims/dvc.yaml passes victims.jpeg_quality this way)
    assert parse_override("attack.jpeg_quality=None") == (["attack", "jpeg_quality"], None)
    assert parse_override("attack.jpeg_quality=null") == (["attack", "jpeg_quality"], None)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("sampdetox.t1")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("=3")
    with pytest.raises(ConfigError, match=r"override victim\.epochs\.x: 'epochs' is not a section"):
        apply_overrides({"victim": {"epochs": 3}}, ["victim.epochs.x=1"])
    with pytest.raises(ConfigError, match=r"override data\.source: cannot parse value"):
        parse_override("data.source=[unclosed")
    with pytest.raises(ConfigError, match=r"params\.yaml: sampdetox\.t9: unknown key"):
        load_params(ROOT / "params.yaml", ["sampdetox.t9=1"])


def test_apply_overrides_does_not_mutate_input():
    raw = {"sampdetox": {"t1": 20}}
    out = apply_overrides(raw, ["sampdetox.t1=5"])
    assert raw == {"sampdetox": {"t1": 20}} and out == {"sampdetox": {"t1": 5}}


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_params(tmp_path / "empty.yaml") == Params()


def test_flat_uses_dotted_names():
    flat = load_params(None).flat()
    assert flat["victim.epochs"] == 10 and flat["diffusion.schedule.kind"] == "linear"
    assert flat["data.image_size"] == "auto"


def test_assignment_is_validated():
    cfg = DataConfig()
    with pytest.raises(ValueError, match="image_size"):
        cfg.image_size = 1


def test_sweep_grid_keys_must_be_sampdetox_keys():
    params = load_params(None, ["sweep.grid={t2: [80, 120], sampdetox.t1: [20]}", "sweep.max_ca_drop=2"])
    assert params.sweep.grid["t2"] == [80, 120] and params.sweep.max_ca_drop == 2.0
    with pytest.raises(ConfigError, match="t9 is not a sampdetox key"):
        load_params(None, ["sweep.grid={t9: [1]}"])
    with pytest.raises(ConfigError, match="no values"):
        load_params(None, ["sweep.grid={t2: []}"])


def test_a_store_victim_is_in_one_list_only_jpeg_stored_lossless_or_recipe_augmented():
    params = load_params(None, ["victims.attacks=[badnets, sig]", "victims.lossless_attacks=[ftrojan]"])
    assert params.victims.lossless_attacks == ["ftrojan"]
    with pytest.raises(ConfigError, match=r"\['sig'\] in both attacks and lossless_attacks"):
        load_params(None, ["victims.attacks=[badnets, sig]", "victims.lossless_attacks=[sig]"])
    with pytest.raises(ConfigError, match=r"\['wanet'\] in both lossless_attacks and recipe_augment_attacks"):
        load_params(None, ["victims.attacks=[badnets]", "victims.lossless_attacks=[wanet]",
                           "victims.recipe_augment_attacks=[wanet]"])

# ------------------------------------------------------------------ params overlays (params.demo.yaml)
def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out.get(key) or {}, value) if isinstance(value, dict) and value else value
    return out


def test_an_overlay_is_its_yaml_merged_key_by_key_into_params_yaml(tmp_path):
    from detoxops.config import overlay_overrides

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    demo = yaml.safe_load((ROOT / "params.demo.yaml").read_text())
    full = load_params(ROOT / "params.yaml", overlay=ROOT / "params.demo.yaml")
    assert full == Params.from_dict(_deep_merge(raw, demo))
    for section, keys in demo.items():
        for key, value in keys.items():
            assert getattr(getattr(full, section), key) == value, f"{section}.{key}"
    # sections left out keep params.yaml's values; the others still apply
    budgets = load_params(ROOT / "params.yaml", overlay=ROOT / "params.demo.yaml", overlay_skip=("data",))
    assert "data" in demo and budgets.data == load_params(ROOT / "params.yaml").data
    assert budgets == Params.from_dict(_deep_merge(raw, {k: v for k, v in demo.items() if k != "data"}))
    assert overlay_overrides(ROOT / "params.demo.yaml", skip_sections=("data",)) == [
        o for o in overlay_overrides(ROOT / "params.demo.yaml") if not o.startswith("data.")]
    # an explicit override wins over the overlay; keys neither names keep params.yaml's values
    later = load_params(ROOT / "params.yaml", ["dataelixir.rounds=7"], overlay=ROOT / "params.demo.yaml")
    assert later.dataelixir.rounds == 7 and later.dataelixir.tau == load_params(ROOT / "params.yaml").dataelixir.tau
    assert overlay_overrides("none") == overlay_overrides(None) == overlay_overrides("") == []

    nested = tmp_path / "nested.yaml"
    nested.write_text("attack:\n  name: blended\n  options: {blended: {alpha: 0.3}}\n"
                      "diffusion:\n  unet: {block_out_channels: [16, 32, 32]}\n  purifier: null\n")
    assert overlay_overrides(nested) == ["attack.name=blended", "attack.options.blended.alpha=0.3",
                                         'diffusion.unet.block_out_channels=[16, 32, 32]', "diffusion.purifier=null"]
    merged = load_params(ROOT / "params.yaml", overlay=nested)
    assert merged.diffusion.unet.block_out_channels == [16, 32, 32] and merged.diffusion.unet.sample_size == "auto"


def test_bad_overlays_are_errors_naming_the_file_or_key(tmp_path):
    from detoxops.config import overlay_overrides

    with pytest.raises(ConfigError, match="params overlay not found: .*missing.yaml"):
        load_params(ROOT / "params.yaml", overlay=tmp_path / "missing.yaml")
    flat = tmp_path / "flat.yaml"
    flat.write_text("epochs: 3\n")
    with pytest.raises(ConfigError, match="flat.yaml: top level must be a mapping of params.yaml sections"):
        overlay_overrides(flat)
    broken = tmp_path / "broken.yaml"
    broken.write_text("dataelixir: [\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        overlay_overrides(broken)
    typo = tmp_path / "typo.yaml"
    typo.write_text("dataelixir:\n  round: 2\n")
    with pytest.raises(ConfigError, match="dataelixir.round"):
        load_params(ROOT / "params.yaml", overlay=typo)


def test_dataelixir_profiles_fill_only_the_fields_left_unset():
    paper = DataElixirConfig(profile="paper").resolved()
    assert (paper.T, paper.rounds, paper.keep_last, paper.tau, paper.sampler) == (150, 5, 10, 5.0, "ddpm")
    assert (paper.mixed, paper.purify, paper.target_rounds) == ("mode", "flagged", 0)
    cifar = DataElixirConfig(profile="cpu_cifar10", rounds=6, purify="flagged").resolved()
    assert (cifar.T, cifar.rounds, cifar.keep_last, cifar.tau, cifar.sampler, cifar.ddim_stride) == (
        150, 6, 1, 2.0, "ddim", 10)
    assert (cifar.mixed, cifar.purify, cifar.target_rounds) == ("suspicious", "flagged", 1)  # purify: set explicitly
    quick = DataElixirConfig(profile="cpu_cifar10_quick").resolved()
    assert (quick.T, quick.rounds, quick.mixed, quick.purify, quick.target_rounds) == (80, 4, "mode", "flagged", 0)
    # a concrete config is its own resolution, whatever the profile says
    concrete = DataElixirConfig(T=7, rounds=1, keep_last=2, tau=1, sampler="ddpm", ddim_stride=3, mixed="mode",
                                purify="all", target_rounds=2)
    assert concrete.resolved() is concrete
    assert DataElixirConfig(T=7, rounds=1, keep_last=2, tau=1, sampler="ddpm", ddim_stride=3).resolved(32).purify == (
        "target_distant")  # a rule left unset still comes from the (auto -> cpu_cifar10 at 32 px) preset
    # the purifier a preset was validated with: only cpu_cifar10 names one of its own
    assert DataElixirConfig(profile="cpu_cifar10").preferred_purifier() == "cifar10-32-v2"
    assert {DataElixirConfig(profile=p).preferred_purifier() for p in ("paper", "cpu_digits", "cpu_cifar10_quick")} == {
        None}
    assert DataElixirConfig().preferred_purifier(32) == "cifar10-32-v2"
    assert DataElixirConfig().preferred_purifier(16) is None


def test_dataelixir_auto_profile_follows_the_image_size():
    auto = DataElixirConfig()
    assert auto.profile == "auto" and auto.T is None
    assert auto.preset_name(16) == "cpu_digits" and auto.resolved(16).T == 40
    assert auto.preset_name(32) == "cpu_cifar10" and auto.resolved(32).sampler == "ddim"
    with pytest.raises(ValueError, match="needs the image size"):
        auto.resolved()


def test_params_yaml_dataelixir_resolves_to_the_validated_settings():
    # the shipped params.yaml: auto, every candidate-set field from the preset
    p = load_params(ROOT / "params.yaml", announce=False)
    assert p.dataelixir.profile == "auto"
    assert p.dataelixir.resolved(32).model_dump(include={"T", "rounds", "keep_last", "tau", "sampler", "mixed",
                                                         "purify", "target_rounds"}) == {
        "T": 150, "rounds": 4, "keep_last": 1, "tau": 2.0, "sampler": "ddim", "mixed": "suspicious",
        "purify": "target_distant", "target_rounds": 1}
    assert p.dataelixir.resolved(16).model_dump(include={"T", "mixed", "purify", "target_rounds"}) == {
        "T": 40, "mixed": "mode", "purify": "flagged", "target_rounds": 0}
    paper = load_params(ROOT / "params.yaml", ["dataelixir.profile=paper"], announce=False)
    assert paper.dataelixir.resolved(32).T == 150


def test_victim_arch_auto_is_decided_by_the_image_size():
    from detoxops.config import VictimConfig

    auto = VictimConfig(arch="auto", epochs=3)
    assert auto.for_image_size(32).arch == "fast_cnn" and auto.for_image_size(32).training_recipe == "airbench"
    assert auto.for_image_size(16).arch == "small_cnn" and auto.for_image_size(16).epochs == 3
    assert auto.for_image_size(32, n_images=10_000).arch == "fast_cnn"
    assert auto.for_image_size(32, n_images=500).arch == "small_cnn"  # too few for airbench's 1,024-image batches
    assert VictimConfig(arch="vgg19").for_image_size(8).arch == "vgg19"  # an explicit arch is kept
    with pytest.raises(ValueError, match="resolve it for the images first"):
        _ = auto.training_recipe
    with pytest.raises(ValueError, match="needs arch 'fast_cnn'"):  # airbench cannot train a small_cnn
        VictimConfig(arch="auto", recipe="airbench").for_image_size(16)
