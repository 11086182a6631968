"""The params each flow runs with: ``params.yaml``, then the demo's overlay ``params.demo.yaml`` (the whole of it for
``flows.demo``; its compute budgets, not its ``data`` section, for ``flows.sanitize`` / ``flows.detox`` /
``flows.ingestion_check``), then the caller's overrides. The expectation is built here from the two YAML files,
merged key by key, independently of ``detoxops.config.overlay_overrides``; the flows are called as plain functions
and stopped as soon as they have loaded their params (no Prefect server, nothing run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detoxops.config import Params, apply_overrides

pytestmark = pytest.mark.platform
ROOT = Path(__file__).resolve().parents[2]


class Loaded(Exception):
    """Raised by the patched ``load_params`` once the flow's params are known."""

    def __init__(self, params: Params) -> None:
        self.params = params


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out.get(key) or {}, value) if isinstance(value, dict) and value else value
    return out


def expected(overrides: list[str], skip: tuple[str, ...] = (), overlay: bool = True) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    demo = yaml.safe_load((ROOT / "params.demo.yaml").read_text()) if overlay else {}
    merged = _deep_merge(raw, {k: v for k, v in demo.items() if k not in skip})
    return Params.from_dict(apply_overrides(merged, overrides)).to_dict()


def loaded_by(module, monkeypatch, call) -> dict:
    real = module.load_params

    def stop(*args, **kwargs):
        raise Loaded(real(*args, **kwargs))

    monkeypatch.setattr(module, "load_params", stop)
    with pytest.raises(Loaded) as caught:
        call()
    return caught.value.params.to_dict()


def test_each_flow_runs_params_yaml_then_the_demo_overlay_then_its_overrides(monkeypatch):
    import flows.demo
    import flows.detox
    import flows.ingestion_check
    import flows.sanitize

    demo = yaml.safe_load((ROOT / "params.demo.yaml").read_text())
    assert {"data", "victim", "dataelixir", "sampdetox"} <= set(demo)  # the sections the flows differ on
    sets = ["dataelixir.rounds=7", "victim.epochs=3"]
    cases = {
        "demo": (flows.demo, lambda: flows.demo.demo.fn("params.yaml", sets), expected(sets)),
        "demo --overlay none": (flows.demo, lambda: flows.demo.demo.fn("params.yaml", sets, overlay="none"),
                                expected(sets, overlay=False)),
        "demo --overlay params.demo.yaml": (flows.demo, lambda: flows.demo.demo.fn(
            "params.yaml", [], overlay="params.demo.yaml"), expected([])),
        "sanitize": (flows.sanitize, lambda: flows.sanitize.sanitize.fn(overrides=sets),
                     expected(sets, skip=("data",))),
        "detox": (flows.detox, lambda: flows.detox.detox.fn(), expected([], skip=("data",))),
        "ingestion_check": (flows.ingestion_check, lambda: flows.ingestion_check._check(
            None, "params.yaml", sets, None, {}, {}, 0.0), expected(sets, skip=("data",))),
    }
    for name, (module, call, want) in cases.items():
        assert loaded_by(module, monkeypatch, call) == want, name
    # the demo alone cuts the data to its subset; the other flows keep params.yaml's data section
    assert cases["demo"][2]["data"] != cases["sanitize"][2]["data"] == Params.from_dict(
        yaml.safe_load((ROOT / "params.yaml").read_text())).to_dict()["data"]


def test_runs_record_the_dataelixir_settings_that_ran():
    from detoxops.config import load_params
    from tasks.ingestion_tasks import params_as_run

    params = load_params(ROOT / "params.yaml", announce=False)
    assert params.dataelixir.T is None  # asked for: the profile's value
    ran = params.dataelixir.resolved(32).model_dump(mode="json")
    logged = params_as_run(params, {"dataelixir": ran})
    assert logged["dataelixir"]["T"] == 150 and logged["dataelixir"]["sampler"] == "ddim"
    assert logged["victim"] == params.to_dict()["victim"]
    assert params_as_run(params, {"dataelixir": None}) == params.to_dict()  # a failed check: what was asked for
    auto = load_params(ROOT / "params.yaml", ["victim.arch=auto"], announce=False)
    assert params_as_run(auto, None, {"arch": "fast_cnn"})["victim"]["arch"] == "fast_cnn"  # as trained


def test_the_model_tag_names_the_architecture_the_data_called_for():
    from detoxops.config import load_params
    from tasks.records import model_tag

    params = load_params(ROOT / "params.yaml", ["victim.arch=auto"], announce=False)
    assert model_tag(params, {"info": {"image_shape": [32, 32, 3]}}) == "fast_cnn"
    many = {"info": {"image_shape": [32, 32, 3], "splits": {"train": {"count": 10_000}}}}
    few = {"info": {"image_shape": [32, 32, 3], "splits": {"train": {"count": 120}}}}
    assert (model_tag(params, many), model_tag(params, few)) == ("fast_cnn", "small_cnn")
    assert model_tag(params, {"info": {"image_shape": [16, 16, 3]}}) == "small_cnn"
    assert model_tag(params, {"info": {}}) == "auto"  # nothing to decide with: what was asked for
    explicit = load_params(ROOT / "params.yaml", ["victim.arch=vgg19"], announce=False)
    assert model_tag(explicit, {"info": {"image_shape": [32, 32, 3]}}) == "vgg19"


def test_flow_runs_log_the_architecture_they_train_and_the_settings_that_ran():
    """The sanitize / detox / benchmark / sweep / demo parent runs log ``victim.arch`` resolved as the tag is."""
    from detoxops.config import load_params
    from tasks.records import run_params

    params = load_params(ROOT / "params.yaml", ["victim.arch=auto"], announce=False)
    many = {"info": {"image_shape": [32, 32, 3], "splits": {"train": {"count": 10_000}}}}
    few = {"info": {"image_shape": [32, 32, 3], "splits": {"train": {"count": 120}}}}
    assert run_params(params, many)["victim"]["arch"] == "fast_cnn"
    assert run_params(params, few)["victim"]["arch"] == "small_cnn"
    ran = params.dataelixir.resolved(32).model_dump(mode="json")
    logged = run_params(params, many, {"dataelixir": ran})
    assert (logged["victim"]["arch"], logged["dataelixir"]["T"]) == ("fast_cnn", 150)
    rest = {k: v for k, v in logged.items() if k not in ("victim", "dataelixir")}
    assert rest == {k: v for k, v in params.to_dict().items() if k not in ("victim", "dataelixir")}
