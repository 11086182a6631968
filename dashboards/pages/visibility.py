"""Visibility vs robustness of each attack's trigger (SampDetox, figure 2)."""

from __future__ import annotations

import altair as alt
import numpy as np
import streamlit as st

from dashboards import store, ui

CSV = "robustness/visibility_robustness.csv"

st.title("Visibility vs robustness")
st.caption("Visibility v = (1 − SSIM(clean, poisoned)) / 2: how much the trigger changes the image. Robustness η_r: "
           "the smallest noise share η (x = (1 − η)·poisoned + η·noise) at which the input no longer hits the "
           "attack's target. SampDetox's stage 1 removes "
           "low-visibility, low-robustness triggers; its stage 2 targets the visible, robust ones.")

runs = ui.load_runs()
uri = ui.tracking_uri()
try:
    candidates = store.runs_with_artifact(uri, runs, CSV)
except store.StoreUnavailable as exc:
    ui.show_unavailable(exc)
    st.stop()
if candidates.empty:
    ui.no_runs("visibility / robustness measurements", f"Runs that measure them store `{CSV}` "
               "(the main job, `make demo`, does; `detoxops attack visibility` writes the same rows as a "
               "CSV outside MLflow).")
    st.stop()

labels = {row.run_id: ui.run_label(row) for _, row in candidates.iterrows()}
run_id = st.selectbox("Run", list(labels), format_func=labels.get, key="visibility_run")
table = store.artifact_csv(uri, run_id, CSV)
# detoxops.attacks.visibility writes `v` / `eta_r`; accept the long names too
table = table.rename(columns={"v": "visibility", "eta_r": "robustness"})
missing = {"attack", "visibility", "robustness"} - set(table.columns)
if missing:
    st.warning(f"`{CSV}` of this run lacks the column(s) {sorted(missing)}; it has {list(table.columns)}.",
               icon=":material/warning:")
    st.dataframe(table, hide_index=True)
    st.stop()
never = ~np.isfinite(table["robustness"].astype(float))
if never.any():
    st.caption(f"{int(never.sum())} poisoned sample(s) still hit the target at the largest noise level tried "
               "(robustness = ∞); they are left out of the plot.")
table = table[~never]

attacks = sorted(table["attack"].astype(str).unique())
chosen = st.multiselect("Attacks", attacks, default=attacks, key="visibility_attacks")
table = table[table["attack"].astype(str).isin(chosen)]
per_attack = table.groupby("attack", as_index=False)[["visibility", "robustness"]].mean()

x_max, y_max = float(table["visibility"].max()) * 1.15 or 1.0, float(table["robustness"].max()) * 1.15 or 1.0
colour = alt.Color("attack:N", scale=alt.Scale(scheme="category10"))
points = alt.Chart(table).mark_circle(size=40, opacity=0.35).encode(
    x=alt.X("visibility:Q", title="visibility (1 − SSIM) / 2", scale=alt.Scale(domain=[0, x_max])),
    y=alt.Y("robustness:Q", title="robustness η_r", scale=alt.Scale(domain=[0, y_max])),
    color=colour,
    tooltip=list(table.columns),
)
means = alt.Chart(per_attack).mark_point(size=220, filled=True, shape="diamond").encode(
    x="visibility:Q", y="robustness:Q", color=colour, tooltip=["attack", "visibility", "robustness"],
)
names = means.mark_text(dx=10, dy=-10, align="left").encode(text="attack:N")
st.altair_chart((points + means + names).properties(height=420), width="stretch")
st.dataframe(per_attack.rename(columns={"visibility": "mean visibility", "robustness": "mean robustness"}),
             hide_index=True)
