"""Sample explorer: clean / poisoned / trigger map / detoxified side by side; DataElixir per-sample decisions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboards import store, ui

SAMPLES_NPZ, GRID_PNG = "samples/samples.npz", "samples/grid.png"
DECISIONS_CSV, CANDIDATES_NPZ = "decisions/decisions.csv", "decisions/candidates.npz"
# Panel title → accepted array names in samples.npz (the first present wins).
PANELS = {
    "clean": ("clean", "clean_images"),
    "poisoned": ("poisoned", "poisoned_images"),
    "trigger map": ("trigger_map", "trigger_maps"),
    "detoxified": ("detoxified", "detoxified_images", "purified"),
}
PREDICTIONS = {"label": "labels", "on poisoned": "pred_poisoned", "on detoxified": "pred_detoxified"}

st.title("Sample explorer")
st.caption("Images the runs stored as artifacts: what the attack did to an input, where SampDetox located the "
           "trigger, and what the detoxified input looks like; DataElixir's decision for every training sample.")

runs = ui.load_runs()
uri = ui.tracking_uri()


def pick_run(candidates: pd.DataFrame, key: str, prefer: pd.Series | None = None) -> pd.Series:
    """A run picker (newest first); the default is the newest run where ``prefer`` is true, else the newest."""
    def label(rid: str) -> str:
        row = candidates[candidates["run_id"] == rid].iloc[0]
        what = " · ".join(str(v) for v in (row["attack"], row["defense"]) if isinstance(v, str))
        return f"{what or row['kind'] or ''} — {ui.run_label(row)}"

    default = 0
    if prefer is not None and prefer.to_numpy(dtype=bool).any():
        default = int(prefer.to_numpy(dtype=bool).argmax())
    rid = st.selectbox("Run", list(candidates.run_id), index=default, format_func=label, key=key)
    return candidates.set_index("run_id").loc[rid]


def first(arrays: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray | None:
    return next((arrays[n] for n in names if n in arrays), None)


# ------------------------------------------------------------------------------------ SampDetox samples
st.header("Detoxification samples")
try:
    with_samples = pd.concat([store.runs_with_artifact(uri, runs, SAMPLES_NPZ),
                              store.runs_with_artifact(uri, runs, GRID_PNG)]).drop_duplicates("run_id")
except store.StoreUnavailable as exc:
    ui.show_unavailable(exc)
    st.stop()
if with_samples.empty:
    ui.no_runs("sample images", f"Defense runs store `{SAMPLES_NPZ}` and `{GRID_PNG}`; run `make demo`.")
else:
    # by default the platform's own SampDetox profile (`sampdetox`), not the paper's `faithful` variant
    run = pick_run(with_samples, "samples_run", prefer=with_samples["defense"].eq("sampdetox"))
    try:
        arrays = store.artifact_npz(uri, run.name, SAMPLES_NPZ)
    except store.ArtifactMissing:
        arrays = {}
    panels = {title: first(arrays, names) for title, names in PANELS.items()}
    panels = {t: a for t, a in panels.items() if a is not None}
    if panels:
        count = min(len(a) for a in panels.values())
        index = st.slider("Sample", 0, max(count - 1, 0), 0, key="samples_index") if count > 1 else 0
        columns = st.columns(len(panels))
        for column, (title, images) in zip(columns, panels.items(), strict=True):
            column.image(ui.as_display(images[index], size=192), caption=title, width="content")
        facts = {title: int(arrays[name][index]) for title, name in PREDICTIONS.items()
                 if name in arrays and len(arrays[name]) > index}
        if facts:
            st.write(" · ".join(f"{k}: **{v}**" for k, v in facts.items()))
    else:
        st.info(f"This run stored no `{SAMPLES_NPZ}` with images; showing its grid.", icon=":material/info:")
    try:
        st.image(store.artifact_bytes(uri, run.name, GRID_PNG), width=480,
                 caption="samples/grid.png — columns: clean | poisoned | trigger map | detoxified")
    except store.ArtifactMissing:
        pass

# ------------------------------------------------------------------------------------ DataElixir decisions
st.header("DataElixir per-sample decisions")
try:
    with_decisions = store.runs_with_artifact(uri, store.runs_of_kind(runs, "sanitize", "ingestion"), DECISIONS_CSV)
except store.StoreUnavailable as exc:
    ui.show_unavailable(exc)
    st.stop()
if with_decisions.empty:
    ui.no_runs("sanitisation decisions", f"Sanitize runs store `{DECISIONS_CSV}`; run `python -m flows.sanitize`.")
    st.stop()

# by default a run that found something: a sanitize run, or an ingestion check that quarantined its dataset
run = pick_run(with_decisions, "decisions_run",
               prefer=with_decisions["kind"].eq("sanitize") | with_decisions["status"].eq("quarantined"))
decisions = store.artifact_csv(uri, run.name, DECISIONS_CSV)
flag_col = next((c for c in ("flagged", "poisoned_pred", "is_poisoned", "detected") if c in decisions), None)
c1, c2 = st.columns([1, 3])
if flag_col is not None:
    flagged = decisions[flag_col].astype(bool)
    c1.metric("Flagged as poisoned", f"{int(flagged.sum())} / {len(decisions)}")
    if c2.toggle("Only flagged samples", value=True, key="decisions_flagged"):
        decisions = decisions[flagged.to_numpy()]
st.dataframe(decisions, hide_index=True, width="stretch", height=min(260, 38 + 35 * len(decisions)))

figures = [p for folder in ("anomaly", "confusion") for p in store.artifact_paths(uri, run.name, folder)
           if p.endswith(".png")]
if figures:
    for column, path in zip(st.columns(len(figures)), figures, strict=True):
        column.image(store.artifact_bytes(uri, run.name, path), caption=path, width="stretch")

try:
    candidates = store.artifact_npz(uri, run.name, CANDIDATES_NPZ)
except store.ArtifactMissing:
    candidates = {}
if not candidates:
    st.caption(f"This run stored no candidate images (`{CANDIDATES_NPZ}`).")
else:
    images = first(candidates, ("candidates", "images"))
    index = candidates.get("index", np.arange(len(images) if images is not None else 0))
    if images is None or len(index) == 0:
        st.caption("The candidate archive holds no images.")
    else:
        which = st.selectbox("Sample (training index)", list(map(int, index)), key="decisions_index")
        at = int(np.flatnonzero(index == which)[0])
        original = first(candidates, ("original", "poisoned", "inputs"))
        shown = ([("input", original[at])] if original is not None else []) + [
            (f"candidate {k + 1}", img) for k, img in enumerate(images[at])
        ]
        row = decisions[decisions["index"] == which] if "index" in decisions else pd.DataFrame()
        if not row.empty:
            st.write(" · ".join(f"{k}: **{v}**" for k, v in row.iloc[0].items()))
        for column, (caption, img) in zip(st.columns(min(len(shown), 8)), shown[:8], strict=False):
            column.image(ui.as_display(img, size=128), caption=caption, width="content")
