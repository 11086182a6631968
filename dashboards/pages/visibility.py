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
table["robustness"] = table["robustness"].astype(float)
table["visibility"] = table["visibility"].astype(float)
attacks = sorted(table["attack"].astype(str).unique())
chosen = st.multiselect("Attacks", attacks, default=attacks, key="visibility_attacks")
table = table[table["attack"].astype(str).isin(chosen)]

# η_r = 0: the victim does not send the triggered image to the target even without noise (no robustness to
# measure; detoxops.attacks.visibility.attack_summary leaves them out too). η_r = ∞: still on the target at the
# largest noise share tried — plotted at η = 1, a lower bound.
hit = table["robustness"] > 0
never = hit & ~np.isfinite(table["robustness"])
notes = []
if (~hit).any():
    notes.append(f"{int((~hit).sum())} of {len(table)} triggered sample(s) do not hit the target even without "
                 "noise (η_r = 0); they are not plotted and not in the robustness mean.")
if never.any():
    notes.append(f"{int(never.sum())} sample(s) still hit the target at the largest noise share tried (η_r = ∞): "
                 "plotted as triangles at η = 1, a lower bound; the mean robustness is over the others.")
if notes:
    st.caption(" ".join(notes))

NEVER, FLIPPED = "never (at η = 1)", "flipped at η_r"
plot = table[hit].assign(
    flips=np.where(never[hit], NEVER, FLIPPED),
    shown=table.loc[hit, "robustness"].where(~never[hit], 1.0),
)
finite = table[hit & ~never]
per_attack = table.groupby("attack", as_index=False).agg(
    samples=("visibility", "size"), visibility=("visibility", "mean"))
per_attack = per_attack.merge(plot.groupby("attack", as_index=False).agg(
    hits=("shown", "size"), never_flipped=("flips", lambda f: int((f == NEVER).sum())), shown=("shown", "mean")),
    on="attack", how="left")
per_attack = per_attack.merge(finite.groupby("attack", as_index=False)["robustness"].mean(), on="attack", how="left")
per_attack[["hits", "never_flipped"]] = per_attack[["hits", "never_flipped"]].fillna(0).astype(int)

x_max = float(table["visibility"].max()) * 1.15 if len(table) else 1.0
colour = alt.Color("attack:N", scale=alt.Scale(scheme="category10"))
points = alt.Chart(plot).mark_point(size=50, opacity=0.45, filled=True).encode(
    x=alt.X("visibility:Q", title="visibility (1 − SSIM) / 2", scale=alt.Scale(domain=[0, x_max or 1.0])),
    y=alt.Y("shown:Q", title="robustness η_r", scale=alt.Scale(domain=[0, 1.05])),
    color=colour,
    shape=alt.Shape("flips:N", title="noise", scale=alt.Scale(domain=[FLIPPED, NEVER],
                                                              range=["circle", "triangle-up"])),
    tooltip=["attack", "index", "visibility", "robustness"] if "index" in plot else ["attack", "visibility", "robustness"],
)
means = alt.Chart(per_attack.dropna(subset=["shown"])).mark_point(size=220, filled=True, shape="diamond").encode(
    x="visibility:Q", y="shown:Q", color=colour, tooltip=["attack", "visibility", "robustness", "never_flipped"],
)
names = means.mark_text(dx=10, dy=-10, align="left").encode(text="attack:N")
st.altair_chart((points + means + names).properties(height=420), width="stretch")
st.caption("Diamond: the attack's mean over the plotted samples (never-flipped ones counted as η = 1).")
st.dataframe(
    per_attack[["attack", "samples", "hits", "never_flipped", "visibility", "robustness"]].rename(columns={
        "hits": "hit the target", "never_flipped": "never flipped", "visibility": "mean visibility",
        "robustness": "mean robustness"}),
    hide_index=True,
    column_config={"mean visibility": st.column_config.NumberColumn(format="%.4f"),
                   "mean robustness": st.column_config.NumberColumn(format="%.3f")},
)
