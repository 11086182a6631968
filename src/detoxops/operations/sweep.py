"""Sweep: SampDetox settings scored on the ``val`` part of the test split, one chosen by the stated rule
(:func:`detoxops.defenses.selection.select_setting`), the choice checked once on the held-out ``test`` part.

The one implementation behind ``detoxops detox sweep`` (the ``sweep`` and ``sweep_point`` stages of ``dvc.yaml``),
``flows.sweep`` (its points are the Prefect task ``tasks.sweep_tasks.evaluate_point``, which scores a point with
:func:`score_setting`, as the default scorer here does) and the selection of ``benchmarks/sampdetox_eval.py sweep``
(:func:`choose`; its rows through :func:`detoxops.defenses.evaluation.score_predictions`, as every point's). Rates
are fractions in every row, summary and result; :meth:`SweepOutcome.markdown`, :meth:`SweepOutcome.metrics` and
:meth:`SweepOutcome.summary_table` (the pipeline's stored views) show them in percent. ``max_ca_drop`` is in
percentage points, as ``params.sweep.max_ca_drop`` states it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detoxops.config import ConfigError, Params, SampDetoxConfig, parse_override
from detoxops.data import ImageSet
from detoxops.fileio import temp_path_for
from detoxops.metrics import percent, percent_rates

__all__ = ["BASELINE", "SweepCase", "SweepChoice", "SweepJob", "SweepOutcome", "choose", "grid_points",
           "local_scorer", "normalise_grid", "parse_grid_args", "point_label", "point_params", "score_setting",
           "sweep"]

BASELINE = "none"
"""The setting every other is compared with: the victim without a defense."""


# ------------------------------------------------------------------------------------------------ the grid
def normalise_grid(grid: dict[str, Any]) -> dict[str, list[Any]]:
    """Strip ``sampdetox.`` prefixes, make scalars one-element lists, and validate every value against
    ``SampDetoxConfig`` (a bad key or value fails before anything runs)."""
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        name = key.removeprefix("sampdetox.")
        if name not in SampDetoxConfig.model_fields:
            raise ConfigError(f"sweep grid: sampdetox.{name}: unknown key")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"sweep grid: sampdetox.{name}: no values")
        for v in values:
            try:
                SampDetoxConfig(**{name: v})
            except ValueError as exc:
                raise ConfigError(f"sweep grid: sampdetox.{name}={v!r}: {exc}") from None
        out[name] = values
    return out


def parse_grid_args(items: list[str]) -> dict[str, list[Any]]:
    """``["sampdetox.t2=80,120", "localiser=diff"]`` → ``{"sampdetox.t2": [80, 120], "localiser": ["diff"]}``
    (values parsed as YAML scalars)."""
    import yaml

    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"sweep grid: {item!r}: expected key=v1,v2")
        path, _ = parse_override(item.split("=", 1)[0] + "=0")
        raw = item.split("=", 1)[1]
        grid[".".join(path)] = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
    return grid


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of ``{"t1": [10, 20], "t2": [80]}`` in key order → ``[{"t1": 10, "t2": 80}, …]``."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def point_label(point: dict[str, Any]) -> str:
    """``t1=10,t2=80`` (the setting name used in selection rows and run names)."""
    return ",".join(f"{k}={v}" for k, v in point.items()) or "params"


def point_params(params: Params, point: dict[str, Any]) -> Params:
    """``params`` with ``params.sampdetox`` updated by one grid point."""
    return params.model_copy(update={"sampdetox": SampDetoxConfig(**{**params.sampdetox.model_dump(mode="json"),
                                                                      **point})})


# --------------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class SweepCase:
    """One attack's inputs: the clean test split, its triggered non-target version, the target label, the victim
    (a classifier module) and the attack (fitted state loaded; ``None`` when it needs none)."""

    name: str
    clean: ImageSet
    triggered: ImageSet
    target: int
    victim: Any
    attack: Any = None


@dataclass(frozen=True)
class SweepJob:
    """One evaluation of a sweep: ``point`` (``None`` = the no-defense baseline) on ``attack``'s ``split``."""

    setting: str
    point: dict[str, Any] | None
    attack: str
    split: str


Scorer = Callable[[list[SweepJob]], list[dict[str, Any]]]
"""Scores jobs, one row per job in the same order (:func:`score_setting`'s rows): :func:`local_scorer` one after
the other, the flow's scorer as Prefect tasks (cached, on its task runner)."""


def score_setting(case: SweepCase, params: Params, defense: str, split: str, *, purifier: str | Path | None = None,
                  max_images: int | None = None, device: str | None = None) -> dict[str, Any]:
    """One sweep evaluation: :func:`~detoxops.operations.evaluate_split` of ``defense`` alone (``sampdetox`` as
    ``params.sampdetox`` configures it, or ``none``) on ``split``. The row: ``defense``, ``ca`` / ``pa`` / ``asr``
    (fractions), ``images_per_s``, ``n_clean``, ``n_poisoned``, ``split``, ``attack``."""
    from detoxops.operations.detox import evaluate_split

    outcome = evaluate_split(case.clean, case.triggered, case.target, case.victim, params, split, [defense],
                             attack_name=case.name, attack=case.attack,
                             purifier=purifier if defense != BASELINE else None, max_images=max_images,
                             device=device)
    row = {k: v for k, v in outcome.rows[0].items() if k != "ca_drop"}  # one defense: no baseline to drop from
    return {**row, "split": split, "attack": case.name}


def local_scorer(cases: dict[str, SweepCase], params: Params, *, purifier: str | Path | None = None,
                 max_images: int | None = None, device: str | None = None) -> Scorer:
    """A :data:`Scorer` running every job here, one after the other (the CLI's)."""

    def score(jobs: list[SweepJob]) -> list[dict[str, Any]]:
        return [score_setting(cases[j.attack], params if j.point is None else point_params(params, j.point),
                              BASELINE if j.point is None else "sampdetox", j.split, purifier=purifier,
                              max_images=max_images, device=device) for j in jobs]

    return score


# ------------------------------------------------------------------------------------------- selection
SUMMARY_RATES = ("mean_asr", "max_asr", "mean_pa", "mean_ca_drop", "max_ca_drop")
"""The rate keys of a setting's summary (fractions; CA drops as fractions of the test set)."""


@dataclass(frozen=True)
class SweepChoice:
    """The rule applied to scored rows: ``chosen`` (its summary), ``why``, every setting's summary (lowest mean ASR
    first) and the Pareto frontier's setting names (baseline excluded)."""

    chosen: dict[str, Any]
    why: str
    summaries: list[dict[str, Any]]
    frontier: list[str]

    @property
    def setting(self) -> str:
        return self.chosen["setting"]


def choose(rows: list[dict[str, Any]], max_ca_drop: float, baseline: str = BASELINE) -> SweepChoice:
    """Rows ``{setting, attack, ca, pa, asr}`` (fractions) → the setting the rule chooses (``max_ca_drop`` in
    points), with the summaries and the ASR-vs-CA-drop Pareto frontier."""
    from detoxops.defenses.selection import pareto_frontier, select_setting, summarise_settings

    summaries = summarise_settings(rows, baseline=baseline)
    chosen, why = select_setting(rows, max_ca_drop=max_ca_drop, baseline=baseline)
    front = [s["setting"] for s in pareto_frontier([s for s in summaries if s["setting"] != baseline])]
    return SweepChoice(chosen=chosen, why=why, summaries=summaries, frontier=front)


# ------------------------------------------------------------------------------------------------ result
@dataclass(frozen=True)
class SweepOutcome:
    """A sweep's result: the grid, the attacks, the rule's bound (points), every setting's ``val`` rows and summary,
    the choice and its held-out check (rows of the baseline and the chosen setting on ``test``, and the chosen
    setting's summary there); rates as fractions. ``result_json`` / ``markdown_md`` / ``metrics_json`` /
    ``summary_csv`` where they were written."""

    grid: dict[str, list[Any]]
    attacks: list[str]
    max_ca_drop: float
    settings: dict[str, dict[str, Any] | None]
    val_rows: list[dict[str, Any]]
    choice: SweepChoice
    heldout_rows: list[dict[str, Any]]
    heldout: dict[str, Any]
    result_json: Path | None = None
    markdown_md: Path | None = None
    metrics_json: Path | None = None
    summary_csv: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def setting(self) -> str:
        """The chosen setting's label."""
        return self.choice.setting

    @property
    def chosen(self) -> dict[str, Any]:
        """The chosen grid point (``sampdetox.*`` values)."""
        return dict(self.settings[self.setting] or {})

    @property
    def overrides(self) -> list[str]:
        """``--set`` overrides that apply the choice."""
        return [f"sampdetox.{k}={v}" for k, v in self.chosen.items()]

    @property
    def rule(self) -> str:
        return (f"lowest mean ASR subject to mean CA drop <= {self.max_ca_drop} points vs no defense "
                "(val split)")

    def result(self) -> dict[str, Any]:
        """The result as data (``sweep_result.json``): rates as fractions (``"unit": "fraction"``)."""
        return {"chosen": self.chosen, "setting": self.setting, "overrides": self.overrides, "why": self.choice.why,
                "rule": self.rule, "unit": "fraction", "grid": self.grid, "attacks": self.attacks,
                "max_ca_drop_points": self.max_ca_drop, "summaries": self.choice.summaries,
                "frontier": self.choice.frontier, "heldout": self.heldout, "heldout_rows": self.heldout_rows,
                "val_rows": self.val_rows}

    def metrics(self) -> dict[str, Any]:
        """The DVC metrics file (``metrics.json``; percent, as the pipeline's other metrics): the chosen setting and
        its summary on ``val`` (where it was chosen) and on the held-out ``test`` split."""
        val = {s["setting"]: s for s in self.choice.summaries}[self.setting]
        return {"setting": self.setting, "chosen": self.chosen, "max_ca_drop_points": self.max_ca_drop,
                **{split: {k: percent(s[k]) for k in SUMMARY_RATES} for split, s in (("val", val),
                                                                                     ("heldout", self.heldout))}}

    def summary_table(self) -> list[dict[str, Any]]:
        """One row per setting on ``val`` (``sweep.csv``, the DVC plot): its summary in percent, whether the rule
        chose it and whether it is on the Pareto frontier."""
        front = set(self.choice.frontier)
        return [{"setting": s["setting"], **percent_rates({k: s[k] for k in SUMMARY_RATES}, SUMMARY_RATES),
                 "chosen": s["setting"] == self.setting, "pareto": s["setting"] in front}
                for s in self.choice.summaries]

    def markdown(self) -> str:
        """The sweep's table, the choice and the held-out check, rates in percent."""
        choice, held, front = self.choice, self.heldout, set(self.choice.frontier)

        def pc(v: float) -> str:
            return f"{percent(v):.1f}"

        lines = [f"# SampDetox sweep ({len(self.attacks)} attacks: {', '.join(self.attacks)})", "",
                 f"Rule: lowest mean ASR subject to mean CA drop <= {self.max_ca_drop} points vs no defense, on the "
                 "validation split.", "", f"**Chosen: `{choice.setting}`** — {choice.why}.", "",
                 "| setting | mean ASR | max ASR | mean PA | mean CA drop | Pareto |", "|---|---:|---:|---:|---:|:-:|"]
        for s in choice.summaries:
            mark = "**" if s["setting"] == choice.setting else ""
            lines.append(f"| {mark}{s['setting']}{mark} | {pc(s['mean_asr'])} | {pc(s['max_asr'])} | "
                         f"{pc(s['mean_pa'])} | {pc(s['mean_ca_drop'])} | {'x' if s['setting'] in front else ''} |")
        lines += ["", "Held-out test split:", "", "| attack | setting | CA | PA | ASR |", "|---|---|---:|---:|---:|"]
        for r in sorted(self.heldout_rows, key=lambda r: (r["attack"], r["setting"] != BASELINE)):
            lines.append(f"| {r['attack']} | {r['setting']} | {pc(r['ca'])} | {pc(r['pa'])} | {pc(r['asr'])} |")
        lines += ["", f"Chosen point on held-out: mean ASR {pc(held['mean_asr'])}, mean PA {pc(held['mean_pa'])}, "
                  f"mean CA drop {pc(held['mean_ca_drop'])}."]
        return "\n".join(lines)


def sweep(params: Params, attacks: list[str], score: Scorer, *, grid: dict[str, Any] | None = None,
          max_ca_drop: float | None = None, out: str | Path | None = None) -> SweepOutcome:
    """Score the no-defense baseline and every point of ``grid`` (``None``: ``params.sweep.grid``; ``sampdetox.*``
    keys; ``{}``: one point, ``params.sampdetox`` as it is, labelled ``params``) on every attack's ``val`` split with
    ``score``, choose by the rule (bound ``max_ca_drop`` points, default ``params.sweep.max_ca_drop``), then score the
    baseline and the choice on ``test``. With ``out`` the result goes to ``<out>/sweep_result.json``
    (:meth:`SweepOutcome.result`), ``<out>/sweep.md`` (:meth:`SweepOutcome.markdown`), ``<out>/metrics.json``
    (:meth:`SweepOutcome.metrics`) and ``<out>/sweep.csv`` (:meth:`SweepOutcome.summary_table`), each written to a
    temporary file and renamed."""
    from detoxops.defenses.selection import summarise_settings

    if not attacks:
        raise ValueError("sweep: no attacks to score")
    grid = normalise_grid(params.sweep.grid if grid is None else grid)
    bound = params.sweep.max_ca_drop if max_ca_drop is None else float(max_ca_drop)
    settings: dict[str, dict[str, Any] | None] = {BASELINE: None, **{point_label(p): p for p in grid_points(grid)}}

    def run(labels: list[str], split: str) -> list[dict[str, Any]]:
        jobs = [SweepJob(label, settings[label], name, split) for label in labels for name in attacks]
        rows = score(jobs)
        if len(rows) != len(jobs):
            raise ValueError(f"sweep: the scorer returned {len(rows)} rows for {len(jobs)} jobs")
        return [{**row, "setting": job.setting} for job, row in zip(jobs, rows, strict=True)]

    val_rows = run(list(settings), "val")
    choice = choose(val_rows, bound)
    heldout_rows = run([BASELINE, choice.setting], "test")
    held = {s["setting"]: s for s in summarise_settings(heldout_rows, baseline=BASELINE)}[choice.setting]
    outcome = SweepOutcome(grid=grid, attacks=list(attacks), max_ca_drop=bound, settings=settings, val_rows=val_rows,
                           choice=choice, heldout_rows=heldout_rows, heldout=held)
    if out is None:
        return outcome
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"result_json": out / "sweep_result.json", "markdown_md": out / "sweep.md",
             "metrics_json": out / "metrics.json", "summary_csv": out / "sweep.csv"}
    for key, text in (("result_json", json.dumps(outcome.result(), indent=2, default=str) + "\n"),
                      ("markdown_md", outcome.markdown() + "\n"),
                      ("metrics_json", json.dumps(outcome.metrics(), indent=2, default=str) + "\n"),
                      ("summary_csv", _csv_text(outcome.summary_table()))):
        tmp = temp_path_for(paths[key])
        tmp.write_text(text)
        tmp.replace(paths[key])
    return SweepOutcome(**{**outcome.__dict__, **paths})


def _csv_text(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows])
    return buffer.getvalue()
