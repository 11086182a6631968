"""Result tables in the papers' style, built from the run frame of :func:`dashboards.store.runs`.

Pure pandas (no Streamlit, no MLflow), so the arithmetic is unit-tested on its own. Metric values are the
fractions the runs logged; the pages show them as percentages.

* SampDetox style: one row per attack, per defense the CA / PA / ASR, and their change against the
  ``none`` defense of the same flow run, dataset, model and attack.
* DataElixir style: one row per attack, TPR / FPR of the poison detection, ACC / ASR of the model retrained on
  the purified set, and ACC / ASR changes against the victim trained on the poisoned set (``none``).
"""

from __future__ import annotations

import pandas as pd

BASELINE = "none"
DEFENSE_METRICS = ("ca", "pa", "asr")
ELIXIR_METRICS = ("tpr", "fpr", "acc", "asr")
KEYS = ("root_run_name", "root_run_id", "dataset", "model", "attack")
LABELS = {"ca": "CA", "pa": "PA", "asr": "ASR", "tpr": "TPR", "fpr": "FPR", "acc": "ACC", "label_acc": "Label ACC"}


def model_of(df: pd.DataFrame) -> pd.Series:
    """The victim architecture of each run: tag ``detoxops.model``, else param ``victim.arch`` / ``arch``."""
    out = pd.Series([None] * len(df), index=df.index, dtype=object)
    for col in ("model", "param.victim.arch", "param.arch"):
        if col in df:
            out = out.fillna(df[col])
    return out.fillna("—")


def _with_keys(df: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    out = df.copy()
    out["model"] = model_of(out)
    for col in ("dataset", "attack", "defense"):
        out[col] = out[col].fillna("—") if col in out else "—"
    for m in metrics:
        if m not in out:
            out[m] = float("nan")
    return out


def defense_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per defense run with CA / PA / ASR and ``d_<metric>`` against ``none``.

    Only runs tagged ``detoxops.kind = defense`` count. When a flow run recorded an attack × defense twice, the
    newest run wins (``runs`` is newest first).
    """
    cols = [*KEYS, "defense", *DEFENSE_METRICS, *(f"d_{m}" for m in DEFENSE_METRICS), "run_id"]
    if runs.empty or "kind" not in runs:
        return pd.DataFrame(columns=cols)
    df = _with_keys(runs[runs["kind"] == "defense"], DEFENSE_METRICS)
    df = df.drop_duplicates([*KEYS, "defense"], keep="first")
    base = df[df["defense"] == BASELINE][[*KEYS, *DEFENSE_METRICS]]
    df = df.merge(base, on=list(KEYS), how="left", suffixes=("", "_base"))
    for m in DEFENSE_METRICS:
        df[f"d_{m}"] = df[m] - df[f"{m}_base"]
    order = {name: i for i, name in enumerate([BASELINE])}
    df["_order"] = df["defense"].map(order).fillna(1)
    df = df.sort_values(["root_run_name", "dataset", "model", "attack", "_order", "defense"])
    return df[cols].reset_index(drop=True)


def drift_alerts(runs: pd.DataFrame) -> pd.DataFrame:
    """Defense runs whose label-drift check was flagged (tag ``detoxops.drift_flagged = true``): the defense sent
    clean images to one class (``drift_class``, net inflow ``drift_inflow``), i.e. it fires a backdoor itself."""
    cols = [*KEYS, "defense", "drift_class", "drift_inflow", "drift_changed", "run_id"]
    if runs.empty or "kind" not in runs or "drift_flagged" not in runs:
        return pd.DataFrame(columns=cols)
    df = _with_keys(runs[(runs["kind"] == "defense") & (runs["drift_flagged"].astype(str) == "true")],
                    ("drift_inflow", "drift_changed"))
    if "drift_class" not in df:
        df["drift_class"] = "—"
    df = df.drop_duplicates([*KEYS, "defense"], keep="first")
    return df.sort_values(["root_run_name", "dataset", "model", "attack", "defense"])[cols].reset_index(drop=True)


def dataelixir_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per sanitize run with TPR / FPR / ACC / ASR, ``d_acc`` / ``d_asr`` against the
    victim trained on the poisoned data (the ``none`` defense run or, failing that, the ``victim`` run of the
    same flow run and attack)."""
    cols = [*KEYS, *ELIXIR_METRICS, "label_acc", "base_ca", "base_asr", "d_acc", "d_asr", "run_id"]
    if runs.empty or "kind" not in runs:
        return pd.DataFrame(columns=cols)
    df = _with_keys(runs[runs["kind"] == "sanitize"], (*ELIXIR_METRICS, "label_acc"))
    df = df.drop_duplicates(list(KEYS), keep="first")
    everything = _with_keys(runs, DEFENSE_METRICS)
    none = everything[(everything["kind"] == "defense") & (everything["defense"] == BASELINE)]
    victims = everything[everything["kind"] == "victim"]
    base = pd.concat([none, victims]).drop_duplicates(list(KEYS), keep="first")
    base = base[[*KEYS, "ca", "asr"]].rename(columns={"ca": "base_ca", "asr": "base_asr"})
    df = df.merge(base, on=list(KEYS), how="left")
    df["d_acc"] = df["acc"] - df["base_ca"]
    df["d_asr"] = df["asr"] - df["base_asr"]
    return df.sort_values(["root_run_name", "dataset", "model", "attack"])[cols].reset_index(drop=True)


def paper_table(long: pd.DataFrame, metrics: tuple[str, ...] = DEFENSE_METRICS, deltas: bool = True) -> pd.DataFrame:
    """Wide view of :func:`defense_table` for one flow run / dataset / model: rows = attacks, columns =
    ``<defense> · <METRIC>`` (+ ``Δ`` columns for the defenses other than ``none``), values in percent."""
    if long.empty:
        return pd.DataFrame()
    defenses = [BASELINE] if BASELINE in set(long["defense"]) else []
    defenses += sorted(d for d in set(long["defense"]) if d != BASELINE)
    table = pd.DataFrame(index=sorted(set(long["attack"])))
    table.index.name = "attack"
    for defense in defenses:
        part = long[long["defense"] == defense].drop_duplicates("attack").set_index("attack")
        for m in metrics:
            table[f"{defense} · {LABELS[m]}"] = part[m] * 100
            if deltas and defense != BASELINE:
                table[f"{defense} · Δ{LABELS[m]}"] = part[f"d_{m}"] * 100
    return table


def newest_run_per_flow(flow_runs: pd.DataFrame) -> list[str]:
    """Run ids of the newest flow run of each flow (``flow_runs`` newest first, columns ``run_id`` / ``flow``):
    the Defense results page's default selection, so a bring-your-own evaluation (flow ``detox-byo``) shows beside
    the latest benchmark / demo / detox run instead of hiding it."""
    if flow_runs.empty:
        return []
    return list(flow_runs.drop_duplicates("flow", keep="first")["run_id"])


def percent_columns(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The rate columns (fractions, as stored) in percent, for a displayed table."""
    out = df.copy()
    for c in columns:
        if c in out:
            out[c] = out[c] * 100
    return out
