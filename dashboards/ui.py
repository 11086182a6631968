"""Shared page furniture: the store in use, guidance instead of tracebacks, image helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboards import store
from dashboards.settings import Settings, load_settings

URI_KEY = "tracking_uri"


def settings() -> Settings:
    return load_settings()


def tracking_uri() -> str:
    """The URI chosen in the sidebar (defaults to the resolved settings)."""
    return st.session_state.get(URI_KEY) or settings().tracking_uri


def sidebar() -> None:
    s = settings()
    with st.sidebar:
        st.caption("Tracking store")
        st.text_input("MLflow tracking URI", value=s.tracking_uri, key=URI_KEY,
                      help="From MLFLOW_TRACKING_URI or params.yaml (tracking.mlflow_uri).")
        if st.button("Refresh data", help="Read the store again (results are cached for 30 s)."):
            store.clear_caches()
        if s.params_error:
            st.warning(f"params.yaml could not be read, defaults used: {s.params_error}")


def show_unavailable(exc: Exception) -> None:
    st.error("The tracking store cannot be read.", icon=":material/cloud_off:")
    st.info(str(exc), icon=":material/info:")


def load_runs() -> pd.DataFrame:
    """All runs of the store, or stop the page with guidance."""
    uri = tracking_uri()
    try:
        return store.runs(uri, settings().experiment_prefix)
    except store.StoreUnavailable as exc:
        show_unavailable(exc)
        st.stop()


def no_runs(what: str, how: str) -> None:
    st.info(f"No {what} recorded yet. {how}", icon=":material/hourglass_empty:")


def multiselect_filter(df: pd.DataFrame, column: str, label: str, key: str) -> pd.DataFrame:
    options = sorted({str(v) for v in df[column].dropna()})
    if len(options) <= 1:
        return df
    chosen = st.multiselect(label, options, default=options, key=key)
    return df[df[column].astype(str).isin(chosen)]


def run_label(row: pd.Series) -> str:
    started = row["start_time"].strftime("%Y-%m-%d %H:%M") if pd.notna(row.get("start_time")) else "?"
    return f"{row['run_name'] or row['run_id'][:8]} · {row.get('flow') or ''} · {started}"


def as_display(image: np.ndarray, size: int = 128) -> np.ndarray:
    """uint8 HWC RGB (or a float/2-D map, scaled to [0, 255] gray) upscaled to ``size`` px by pixel repetition,
    so 16×16 or 32×32 images stay crisp."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)  # CHW → HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        lo, hi = (0.0, 1.0) if arr.min() >= 0 and arr.max() <= 1 else (float(arr.min()), float(arr.max()))
        arr = (np.clip((arr - lo) / max(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    factor = max(1, size // max(arr.shape[:2]))
    return np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)


def format_percent(df: pd.DataFrame) -> dict:
    """A column config showing every float column as a percentage with one decimal."""
    return {c: st.column_config.NumberColumn(c, format="%.1f") for c in df.columns if df[c].dtype.kind == "f"}
