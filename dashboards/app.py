"""Entry point: ``streamlit run dashboards/app.py`` — a multipage app (``st.navigation``), one module per page."""

from __future__ import annotations

import sys
from pathlib import Path

# Streamlit runs this file as a script; make `dashboards` and `detoxops` importable from a plain checkout.
_ROOT = Path(__file__).resolve().parents[1]
for _path in (_ROOT, _ROOT / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import streamlit as st  # noqa: E402

from dashboards import ui  # noqa: E402

PAGES_DIR = Path(__file__).parent / "pages"

st.set_page_config(page_title="detoxops", page_icon=":material/shield:", layout="wide")

navigation = st.navigation(
    {
        "Results": [
            st.Page(PAGES_DIR / "overview.py", title="Overview", icon=":material/dashboard:", default=True),
            st.Page(PAGES_DIR / "defense_results.py", title="Defense results", icon=":material/table_chart:"),
            st.Page(PAGES_DIR / "sample_explorer.py", title="Sample explorer", icon=":material/image_search:"),
            st.Page(PAGES_DIR / "visibility.py", title="Visibility vs robustness", icon=":material/scatter_plot:"),
        ],
        "Interactive": [
            st.Page(PAGES_DIR / "try_it.py", title="Try it", icon=":material/science:"),
        ],
    }
)
ui.sidebar()
navigation.run()
