"""Overview: latest ingestion checks, dataset versions, registered models, recent flow runs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import dvc_meta, store, ui

st.title("Overview")
st.caption("What the platform's runs recorded: are incoming datasets clean, which data and models are in use.")

runs = ui.load_runs()
uri = ui.tracking_uri()
settings = ui.settings()

if runs.empty:
    ui.no_runs("runs", "Run the main job (`make demo`) and press *Refresh data*; results appear here.")

# ------------------------------------------------------------------------------------- ingestion checks
st.header("Ingestion checks")
checks = store.runs_of_kind(runs, "ingestion")
if checks.empty:
    ui.no_runs("ingestion checks", "Check an incoming dataset with `python -m flows.ingestion_check` "
               "(or the scheduled deployment).")
else:
    passed = int((checks["status"] == "passed").sum())
    quarantined = int((checks["status"] == "quarantined").sum())
    failed = int((checks["status"] == "failed").sum())
    latest = checks.iloc[0]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Latest check", str(latest["status"] or "unknown"),
              help=f"{latest['dataset'] or '?'} @ {latest['data_version'] or '?'}")
    c2.metric("Passed", passed)
    c3.metric("Quarantined", quarantined)
    c4.metric("Failed", failed, help="checks that ended without a verdict (an error); the reason is in the table")
    if latest["status"] == "quarantined":
        st.error(f"Latest dataset **{latest['dataset']}** was quarantined: poisoning detected, "
                 f"target label **{latest['target_label']}**.", icon=":material/gpp_bad:")
    elif latest["status"] == "passed":
        st.success(f"Latest dataset **{latest['dataset']}** passed the check.", icon=":material/verified_user:")
    elif latest["status"] == "failed":
        reason = str(latest.get("failure_reason") or "unknown").splitlines()[0]
        st.warning(f"The latest check of **{latest['dataset']}** failed without a verdict: {reason}",
                   icon=":material/error:")
    try:
        anomaly = store.artifact_bytes(uri, latest["run_id"], "anomaly/anomaly_index.png")
        st.image(anomaly, width=420, caption="Latest check: anomaly index per label (DataElixir); "
                 "an outlying label is the attack's target")
    except store.ArtifactMissing:
        pass
    except store.StoreUnavailable as exc:
        ui.show_unavailable(exc)
    view = checks.assign(verdict=checks["status"].fillna("unknown"))
    # TPR / FPR exist only for sources with ground-truth poison flags; shown in % like the other pages
    metric_cols = [c for c in ("tpr", "fpr", "n_flagged", "seconds") if c in view and view[c].notna().any()]
    for c in ("tpr", "fpr"):
        if c in metric_cols:
            view[c] = view[c] * 100.0
    st.dataframe(
        view[["start_time", "dataset", "data_version", "verdict", "target_label", *metric_cols,
              *(["failure_reason"] if "failure_reason" in view and view["failure_reason"].notna().any() else []),
              "run_id"]],
        hide_index=True, width="stretch",
        column_config={"start_time": st.column_config.DatetimeColumn("checked", format="YYYY-MM-DD HH:mm"),
                       "target_label": "detected target label",
                       "failure_reason": "reason (failed checks)",
                       "tpr": st.column_config.NumberColumn("TPR %", format="%.1f"),
                       "fpr": st.column_config.NumberColumn("FPR %", format="%.1f"),
                       "n_flagged": st.column_config.NumberColumn("flagged", format="%d"),
                       "seconds": st.column_config.NumberColumn("seconds", format="%.0f")},
    )

# -------------------------------------------------------------------------------------- dataset versions
st.header("Dataset versions")
used = runs.dropna(subset=["data_version"]) if not runs.empty else runs
stored = dvc_meta.dataset_versions(settings.data_root, settings.project_root)
if used.empty and stored.empty:
    ui.no_runs("dataset versions", f"Ingest data with `detoxops data ingest` (stored under `{settings.data_root}`).")
if not used.empty:
    st.subheader("Used by runs")
    by_version = (
        used.groupby(["dataset", "data_version"], dropna=False)
        .agg(runs=("run_id", "count"), last_used=("start_time", "max"), flows=("flow", lambda f: ", ".join(sorted(set(f)))))
        .reset_index().sort_values("last_used", ascending=False)
    )
    st.dataframe(by_version, hide_index=True, width="stretch",
                 column_config={"last_used": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")})
if not stored.empty:
    st.subheader(f"Stored under `{settings.data_root}`")
    stored = stored.assign(dvc=stored["dvc_md5"].map(lambda h: "tracked" if h else "not tracked"))
    st.dataframe(stored.drop(columns=["path"]), hide_index=True, width="stretch")

# ------------------------------------------------------------------------------------- registered models
st.header("Registered models")
try:
    models = store.registered_models(uri)
except store.StoreUnavailable as exc:
    ui.show_unavailable(exc)
    models = pd.DataFrame()
if models.empty:
    ui.no_runs("registered models", "The demo registers `detoxops-victim`, `detoxops-purifier` and `detoxops-guard`.")
else:
    st.dataframe(models, hide_index=True, width="stretch",
                 column_config={"created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")})

# ----------------------------------------------------------------------------------------- flow runs
if not runs.empty:
    st.header("Recent flow runs")
    roots = runs[runs["parent_run_id"].isna()].head(20)
    children = runs.groupby("root_run_id").size()
    roots = roots.assign(nested_runs=roots["run_id"].map(children).fillna(1).astype(int) - 1)
    st.dataframe(roots[["start_time", "flow", "run_name", "run_status", "dataset", "nested_runs", "run_id"]],
                 hide_index=True, width="stretch",
                 column_config={"start_time": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")})
