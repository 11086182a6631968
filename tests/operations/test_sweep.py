"""One sweep, three entry points: :func:`detoxops.operations.sweep` scored here (``local_scorer``), the same with the
flow's Prefect task doing each point (``tasks.sweep_tasks.evaluate_point``, what ``flows.sweep`` submits), and
``detoxops detox sweep`` give the same rows, the same chosen setting and the same files on a tiny poisoned set."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from detoxops.cli import app
from detoxops.config import ConfigError, ScheduleConfig, UNetConfig, load_params
from detoxops.data import ImageSet, load_version, save_version
from detoxops.diffusion import NoiseSchedule, Purifier, build_unet, save_purifier
from detoxops.models import load_classifier
from detoxops.operations import poison, train_victim
from detoxops.operations.sweep import (
    SweepCase,
    SweepJob,
    choose,
    grid_points,
    local_scorer,
    normalise_grid,
    parse_grid_args,
    point_label,
    sweep,
)

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tasks/ is a top-level package of the checkout, not installed
    sys.path.insert(0, str(ROOT))

pytestmark = pytest.mark.platform  # the flow's task imports Prefect (no server needed: its function is called)

GRID = {"sampdetox.t2": [20, 60], "localiser": ["diff", "pixel_ssim"]}
OVERRIDES = ["victim.arch=small_cnn", "victim.width=4", "victim.epochs=15", "victim.device=cpu",
             "attack.poison_ratio=0.3", "sampdetox.sampler=ddim", "sampdetox.ddim_stride=5", "sampdetox.t1=10", "sampdetox.t_loc=20",
             "data.val_fraction=0.5", "data.seed=3", "attack.name=badnets", "attack.target=0"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """A 3-class 8 px set poisoned once into both layouts (the CLI's ``attack run`` folder and the tasks' dataset
    version), an untrained victim (its predictions vary with the input) and an untrained purifier."""
    root = tmp_path_factory.mktemp("sweep-paths")
    rng = np.random.default_rng(0)

    def split(n_per_class: int) -> ImageSet:
        labels = np.repeat(np.arange(3), n_per_class).astype(np.int64)
        return ImageSet(rng.integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8), labels, ["a", "b", "c"])

    params = load_params(None, OVERRIDES)
    clean = save_version({"train": split(10), "test": split(12)}, root / "data", "toy", source="test")
    splits = load_version(clean)
    outcome = poison(splits["train"], splits["test"], params.attack, out=root / "poisoned",
                     version_root=root / "data", version_name="toy-badnets", source=str(clean), progress=False)
    # a few epochs on the poisoned set: predictions that vary with the input and follow the trigger
    train_victim(outcome.train, params.victim, root / "victim", attack=outcome.attack, progress=False)
    save_purifier(Purifier(build_unet(UNetConfig(sample_size=8, block_out_channels=[8, 16])),
                           NoiseSchedule.from_config(ScheduleConfig())), root / "purifier")
    (root / "params.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    return {"root": root, "params": params, "clean": clean, "version": str(outcome.version),
            "attack_cfg": params.attack.model_dump(mode="json"), "attack": outcome.attack,
            "victim": root / "victim", "purifier": root / "purifier"}


def _core(inputs, scorer_kind: str, out: Path):
    from tasks.attack_tasks import load_test_splits
    from tasks.sweep_tasks import evaluate_point

    params = inputs["params"]
    if scorer_kind == "local":
        clean, triggered, attack = load_test_splits(inputs["version"], inputs["attack_cfg"])
        case = SweepCase("badnets", clean, triggered, 0, load_classifier(inputs["victim"]), attack)
        score = local_scorer({"badnets": case}, params, purifier=inputs["purifier"])
    else:  # the flow's task scorer submits these calls to Prefect; the task's own function, called as it would be
        base = params.sampdetox.model_dump(mode="json")

        def score(jobs: list[SweepJob]) -> list[dict]:
            return [evaluate_point.fn(inputs["version"], str(inputs["victim"]), str(inputs["purifier"]),
                                      inputs["attack_cfg"], base if j.point is None else {**base, **j.point},
                                      "none" if j.point is None else "sampdetox", j.split,
                                      params.data.val_fraction, params.data.seed, None) for j in jobs]

    return sweep(params, ["badnets"], score, grid=GRID, max_ca_drop=3.0, out=out)


def _cli(inputs, out: Path) -> dict:
    args = ["detox", "sweep", "--poisoned", inputs["root"] / "poisoned", "--victim", inputs["victim"],
            "--clean", inputs["clean"], "--purifier", inputs["purifier"], "--out", out,
            "--params", inputs["root"] / "params.yaml", "--max-ca-drop", "3"]
    for key, values in GRID.items():
        args += ["--grid", f"{key}={','.join(str(v) for v in values)}"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "apply with: --set sampdetox." in result.output
    return json.loads((out / "sweep_result.json").read_text())


def _comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in rows]


def test_core_flow_task_and_cli_give_the_same_sweep(inputs):
    local = _core(inputs, "local", inputs["root"] / "out-local")
    task = _core(inputs, "task", inputs["root"] / "out-task")
    cli = _cli(inputs, inputs["root"] / "out-cli")

    # the grid (2 x 2) and the baseline on val, the baseline and the choice on test
    assert len(local.val_rows) == 5 and {r["split"] for r in local.val_rows} == {"val"}
    assert [r["setting"] for r in local.heldout_rows] == ["none", local.setting]
    # the points differ from each other (the test can tell settings apart), all rates are fractions
    assert len({(r["ca"], r["pa"], r["asr"]) for r in local.val_rows}) > 1
    assert all(0 <= r[k] <= 1 for r in local.val_rows + local.heldout_rows for k in ("ca", "pa", "asr"))
    for other in (task.result(), cli):
        assert _comparable(other["val_rows"]) == _comparable(local.val_rows)
        assert _comparable(other["heldout_rows"]) == _comparable(local.heldout_rows)
        assert other["setting"] == local.setting and other["overrides"] == local.overrides
        assert other["summaries"] == local.choice.summaries and other["why"] == local.choice.why
    # the choice is the rule's on the val rows; the markdown shows percent
    assert choose(local.val_rows, 3.0).setting == local.setting
    assert local.overrides == [f"sampdetox.{k}={v}" for k, v in local.chosen.items()]
    md = (inputs["root"] / "out-cli" / "sweep.md").read_text()
    assert md == (inputs["root"] / "out-local" / "sweep.md").read_text()
    base = local.heldout_rows[0]
    assert f"| badnets | none | {100 * base['ca']:.1f} | {100 * base['pa']:.1f} | {100 * base['asr']:.1f} |" in md


def test_stored_views_and_the_one_point_sweep(inputs, tmp_path):
    """``metrics.json`` / ``sweep.csv`` (the DVC stages' metrics and plot) are the outcome's summaries in percent; the
    CLI's ``--point`` (stage ``sweep_point``) is the sweep with an empty grid: params.sampdetox as it is, labelled
    ``params``, scored exactly as the same setting is as a grid point."""
    local = _core(inputs, "local", tmp_path / "grid")
    metrics = json.loads((tmp_path / "grid" / "metrics.json").read_text())
    val = {s["setting"]: s for s in local.choice.summaries}[local.setting]
    assert metrics["setting"] == local.setting and metrics["chosen"] == local.chosen
    for key in ("mean_asr", "max_asr", "mean_pa", "mean_ca_drop", "max_ca_drop"):
        assert metrics["val"][key] == pytest.approx(100 * val[key])
        assert metrics["heldout"][key] == pytest.approx(100 * local.heldout[key])
    with (tmp_path / "grid" / "sweep.csv").open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["setting", "mean_asr", "max_asr", "mean_pa", "mean_ca_drop", "max_ca_drop", "chosen",
                              "pareto"]
    assert [r["setting"] for r in table] == [s["setting"] for s in local.choice.summaries]
    assert [r["setting"] for r in table if r["chosen"] == "True"] == [local.setting]
    assert float(table[0]["mean_asr"]) == pytest.approx(100 * local.choice.summaries[0]["mean_asr"], abs=1e-4)

    # the chosen point as params.sampdetox, scored as one point: the same val rows as in the grid
    params_file = tmp_path / "params.yaml"
    chosen = inputs["params"].to_dict()
    chosen["sampdetox"].update(local.chosen)
    params_file.write_text(yaml.safe_dump(chosen, sort_keys=False))
    args = ["detox", "sweep", "--poisoned", inputs["root"] / "poisoned", "--victim", inputs["victim"], "--clean",
            inputs["clean"], "--purifier", inputs["purifier"], "--out", tmp_path / "point", "--params", params_file,
            "--point"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    point = json.loads((tmp_path / "point" / "sweep_result.json").read_text())
    assert point["setting"] == "params" and point["grid"] == {} and point["overrides"] == []
    grid_rows = {r["setting"]: r for r in _comparable(local.val_rows)}
    point_rows = {r["setting"]: r for r in _comparable(point["val_rows"])}
    assert point_rows["none"] == grid_rows["none"]
    assert {**point_rows["params"], "setting": local.setting} == grid_rows[local.setting]
    result = CliRunner().invoke(app, [str(a) for a in args + ["--grid", "t2=20"]])
    assert result.exit_code != 0 and "give it or --grid, not both" in result.output


def test_cli_names_bad_input(inputs, tmp_path):
    result = CliRunner().invoke(app, ["detox", "sweep", "--poisoned", str(inputs["root"] / "poisoned"),
                                      "--poisoned", str(inputs["root"] / "poisoned"), "--victim",
                                      str(inputs["victim"]), "--out", str(tmp_path), "--params",
                                      str(inputs["root"] / "params.yaml")])
    assert result.exit_code != 0 and "2 --poisoned folders but 1 --victim" in result.output
    result = CliRunner().invoke(app, ["detox", "sweep", "--poisoned", str(inputs["root"] / "poisoned"), "--victim",
                                      str(inputs["victim"]), "--out", str(tmp_path), "--params",
                                      str(inputs["root"] / "params.yaml"), "--grid", "sampdetox.t9=1"])
    assert result.exit_code != 0 and "sampdetox.t9: unknown key" in result.output


def test_grid_parsing_and_labels():
    grid = normalise_grid(parse_grid_args(["sampdetox.t2=80,120", "localiser=diff"]))
    assert grid == {"t2": [80, 120], "localiser": ["diff"]}
    points = grid_points(grid)
    assert points == [{"t2": 80, "localiser": "diff"}, {"t2": 120, "localiser": "diff"}]
    assert point_label(points[1]) == "t2=120,localiser=diff"
    with pytest.raises(ConfigError, match="expected key=v1,v2"):
        parse_grid_args(["t2"])
    with pytest.raises(ConfigError, match="localiser"):
        normalise_grid({"localiser": ["nope"]})


def test_a_scorer_that_drops_rows_is_refused():
    params = load_params(None, OVERRIDES)
    with pytest.raises(ValueError, match="returned 0 rows for 3 jobs"):
        sweep(params, ["badnets"], lambda jobs: [], grid={"t2": [20, 60]})
