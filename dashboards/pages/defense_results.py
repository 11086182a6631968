"""Defense results: attack × defense tables in the papers' style, deltas against no defense, charts."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import results, ui

st.title("Defense results")
st.caption("CA = clean accuracy, PA = accuracy on poisoned inputs w.r.t. their true labels, ASR = attack success "
           "rate; values in %, Δ = change against the same attack without defense (`none`). DataElixir: TPR / FPR "
           "of poison detection, ACC / ASR of the model retrained on the purified data.")

runs = ui.load_runs()
sampdetox = results.defense_table(runs)
elixir = results.dataelixir_table(runs)
if sampdetox.empty and elixir.empty:
    ui.no_runs("defense results", "Run the main job (`make demo`) or a benchmark (`python -m flows.benchmark`); "
               "each attack × defense run is tagged `detoxops.kind=defense`.")
    st.stop()

# ------------------------------------------------------------------------------------------- filters
both = pd.concat([sampdetox[list(results.KEYS)], elixir[list(results.KEYS)]]).drop_duplicates()
flow_runs = (runs[runs["run_id"].isin(both["root_run_id"])][["run_id", "run_name", "flow", "start_time"]]
             .drop_duplicates("run_id"))
labels = {row.run_id: ui.run_label(row) for _, row in flow_runs.iterrows()}
with st.container(border=True):
    c1, c2, c3 = st.columns([2, 1, 1])
    chosen_runs = c1.multiselect("Flow run", list(labels), default=results.newest_run_per_flow(flow_runs),
                                 format_func=labels.get, key="results_runs",
                                 help="Newest first; by default the newest run of each flow (benchmark, demo, your "
                                 "own model and images: detox-byo), side by side.")
    datasets = sorted(both["dataset"].astype(str).unique())
    chosen_datasets = c2.multiselect("Dataset", datasets, default=datasets, key="results_datasets")
    models = sorted(both["model"].astype(str).unique())
    chosen_models = c3.multiselect("Model", models, default=models, key="results_models")


def keep(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["root_run_id"].isin(chosen_runs) & df["dataset"].astype(str).isin(chosen_datasets)
              & df["model"].astype(str).isin(chosen_models)]


sampdetox, elixir = keep(sampdetox), keep(elixir)
if sampdetox.empty and elixir.empty:
    st.info("No results match these filters.", icon=":material/filter_alt_off:")
    st.stop()

# ------------------------------------------------------------------------------------ SampDetox style
st.header("Attack × defense (CA / PA / ASR)")
if sampdetox.empty:
    ui.no_runs("attack × defense runs for this selection", "")
for (run_name, dataset, model), group in sampdetox.groupby(["root_run_name", "dataset", "model"], sort=False):
    st.subheader(f"{dataset} · {model} · run {run_name}")
    table = results.paper_table(group)
    st.dataframe(table, width="stretch", column_config=ui.format_percent(table))

    long = group.melt(id_vars=["attack", "defense"], value_vars=["ca", "pa", "asr"], var_name="metric")
    long = long.assign(metric=long["metric"].map(results.LABELS), value=long["value"] * 100)
    chart = (
        alt.Chart(long).mark_bar()
        .encode(x=alt.X("defense:N", title=None), y=alt.Y("value:Q", title="%", scale=alt.Scale(domain=[0, 100])),
                color="defense:N", column=alt.Column("attack:N", title=None), row=alt.Row("metric:N", title=None),
                tooltip=["attack", "defense", "metric", alt.Tooltip("value:Q", format=".1f")])
        .properties(width=90, height=110)
    )
    st.altair_chart(chart)

alerts = keep(results.drift_alerts(runs))
for row in alerts.itertuples():
    st.warning(f"**Label drift** · {row.dataset} · {row.model} · attack {row.attack} · defense {row.defense}: "
               f"the defense moved {100 * row.drift_inflow:.0f} % of the clean images (net) into class "
               f"{row.drift_class} ({100 * row.drift_changed:.0f} % changed label). It fires a backdoor itself: "
               "do not trust this model behind it (docs/sampdetox.md, label-drift check).",
               icon=":material/warning:")

# ----------------------------------------------------------------------------------- DataElixir style
st.header("DataElixir sanitisation (TPR / FPR / ACC / ASR)")
if elixir.empty:
    ui.no_runs("sanitisation runs for this selection", "Run `python -m flows.sanitize` (runs tagged "
               "`detoxops.kind=sanitize`).")
else:
    view = results.percent_columns(elixir, ["tpr", "fpr", "acc", "asr", "label_acc", "base_ca", "base_asr", "d_acc", "d_asr"])
    view = view.rename(columns={"tpr": "TPR", "fpr": "FPR", "acc": "ACC", "asr": "ASR", "label_acc": "Label ACC",
                                "base_ca": "none · CA", "base_asr": "none · ASR", "d_acc": "ΔACC", "d_asr": "ΔASR",
                                "root_run_name": "run"})
    view = view.drop(columns=["root_run_id"]).dropna(axis=1, how="all")
    st.dataframe(view, hide_index=True, width="stretch", column_config=ui.format_percent(view))
    bars = elixir.melt(id_vars=["attack"], value_vars=["tpr", "fpr", "acc", "asr"], var_name="metric")
    bars = bars.assign(metric=bars["metric"].map(results.LABELS), value=bars["value"] * 100)
    st.altair_chart(
        alt.Chart(bars).mark_bar()
        .encode(x=alt.X("metric:N", title=None, sort=["TPR", "FPR", "ACC", "ASR"]),
                y=alt.Y("value:Q", title="%", scale=alt.Scale(domain=[0, 100])), color="metric:N",
                column=alt.Column("attack:N", title=None),
                tooltip=["attack", "metric", alt.Tooltip("value:Q", format=".1f")])
        .properties(width=120, height=160)
    )

with st.expander("All rows (as recorded)"):
    st.dataframe(pd.concat([sampdetox.assign(table="attack×defense"), elixir.assign(table="dataelixir")]),
                 hide_index=True, width="stretch")
    st.download_button("Download CSV", sampdetox.to_csv(index=False), "defense_results.csv", "text/csv")
