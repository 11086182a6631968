"""Every page of the dashboard, run headless with AppTest against the fixture store, an empty store and an
unreachable one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "dashboards" / "app.py")

pytestmark = pytest.mark.platform
PAGES = ["pages/overview.py", "pages/defense_results.py", "pages/sample_explorer.py", "pages/visibility.py",
         "pages/try_it.py"]


def run_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page != PAGES[0]:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning",
                                  "error", "success") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def frames(at: AppTest) -> list[pd.DataFrame]:
    return [d.value for d in at.dataframe]


def test_overview_shows_checks_versions_and_models(dashboard_env):
    TARGET = dashboard_env["target"]
    at = run_page(PAGES[0])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Latest check"] == "quarantined"
    assert metrics["Quarantined"] == "1" and metrics["Passed"] == "0"
    assert f"target label **{TARGET}**" in texts(at)
    all_frames = frames(at)
    assert any(dashboard_env["data_version"] in set(f.get("data_version", [])) for f in all_frames)
    assert any(dashboard_env["data_version"] in set(f.get("version", [])) for f in all_frames)  # from version.json
    models = next(f for f in all_frames if "name" in f and "version" in f)
    assert set(models["name"]) == {"detoxops-victim", "detoxops-purifier"}
    assert set(models["aliases"]) == {"champion"}
    flow_runs = next(f for f in all_frames if "nested_runs" in f)
    assert set(flow_runs["flow"]) == {"demo", "ingestion_check"} and set(flow_runs["run_status"]) == {"FINISHED"}
    assert flow_runs.set_index("flow").loc["demo", "nested_runs"] == 5  # 4 attack x defense runs + 1 sanitize


def test_defense_results_table_and_deltas(dashboard_env):
    DEFENSE_METRICS, ELIXIR_METRICS = dashboard_env["defense_metrics"], dashboard_env["elixir_metrics"]
    at = run_page(PAGES[1])
    table = at.dataframe[0].value
    assert list(table.index) == ["badnets", "blended"]
    for (attack, defense), (ca, pa, asr) in DEFENSE_METRICS.items():
        assert table.loc[attack, f"{defense} · CA"] == pytest.approx(ca * 100)
        assert table.loc[attack, f"{defense} · ASR"] == pytest.approx(asr * 100)
        if defense != "none":
            base = DEFENSE_METRICS[(attack, "none")]
            assert table.loc[attack, f"{defense} · ΔASR"] == pytest.approx((asr - base[2]) * 100)
            assert table.loc[attack, f"{defense} · ΔPA"] == pytest.approx((pa - base[1]) * 100)
    elixir = at.dataframe[1].value
    tpr, fpr, acc, asr, _ = ELIXIR_METRICS["badnets"]
    row = elixir[elixir["attack"] == "badnets"].iloc[0]
    assert row["TPR"] == pytest.approx(tpr * 100) and row["FPR"] == pytest.approx(fpr * 100)
    assert row["ΔASR"] == pytest.approx((asr - DEFENSE_METRICS[("badnets", "none")][2]) * 100)
    assert row["ΔACC"] == pytest.approx((acc - DEFENSE_METRICS[("badnets", "none")][0]) * 100)
    # the label-drift check recorded by the defense runs: one warning, for the flagged (attack, defense)
    drift = [w.value for w in at.warning if "Label drift" in w.value]
    assert len(drift) == 1 and "attack blended" in drift[0] and "37 %" in drift[0] and "class 0" in drift[0]


def test_defense_results_filters(dashboard_env):
    at = run_page(PAGES[1])
    at.multiselect(key="results_models").set_value([]).run()
    assert not at.exception
    assert "No results match these filters" in texts(at)


def test_sample_explorer_shows_panels_and_decisions(dashboard_env):
    at = run_page(PAGES[2])
    captions = [img.caption for element in at.get("image") for img in element.proto.imgs]
    assert captions[:4] == ["clean", "poisoned", "trigger map", "detoxified"]
    assert captions[4].startswith("samples/grid.png")
    assert captions[5:] == ["input", "candidate 1", "candidate 2", "candidate 3"]  # the fixture's 3 candidates
    assert at.slider(key="samples_index").max == 5
    assert at.metric[0].value == "3 / 6"  # flagged decisions recorded by the fixture
    decisions = at.dataframe[0].value
    assert len(decisions) == 3 and decisions["flagged"].all()  # "only flagged" is on by default
    at.toggle(key="decisions_flagged").set_value(False).run()
    assert len(at.dataframe[0].value) == 6


def test_visibility_scatter_table(dashboard_env):
    import numpy as np

    from dashboards import store

    recorded = store.artifact_csv(dashboard_env["uri"], dashboard_env["run_ids"]["parent"],
                                  "robustness/visibility_robustness.csv")
    # as detoxops.attacks.visibility.attack_summary: v over every sample, η_r over the hits (η_r > 0) it flips
    eta = recorded["eta_r"].astype(float)
    flipped = recorded[(eta > 0) & np.isfinite(eta)]
    expected_v = recorded.groupby("attack")["v"].mean()
    expected_eta = flipped.groupby("attack")["eta_r"].mean().reindex(expected_v.index)
    at = run_page(PAGES[3])
    means = at.dataframe[0].value.set_index("attack")
    assert list(means.index) == sorted(expected_v.index) == ["badnets", "blended"]
    assert np.allclose(means["mean visibility"], expected_v)
    assert np.allclose(means["mean robustness"], expected_eta, equal_nan=True)
    assert list(means["samples"]) == list(recorded.groupby("attack").size())
    assert list(means["never flipped"]) == list(recorded.assign(n=np.isinf(eta)).groupby("attack")["n"].sum())
    assert ("largest noise share tried" in texts(at)) == bool(np.isinf(eta).any())
    assert ("do not hit the target" in texts(at)) == bool((eta == 0).any())


def test_try_it_detoxifies_a_dataset_image_with_registered_models(dashboard_env):
    at = run_page(PAGES[4])
    assert at.selectbox(key="try_victim").options == ["detoxops-victim v1 @champion"]
    assert at.selectbox(key="try_purifier").options == ["detoxops-purifier v1 @champion"]
    at.radio(key="try_source").set_value("From a dataset version").run()
    assert not at.exception
    assert at.number_input(key="try_idx").max == 19  # the fixture's test split holds 20 images
    at.toggle(key="try_fast").set_value(True).run()  # DDIM keeps the test in seconds on a CPU
    at.button(key="try_run_button").click().run()
    assert not at.exception
    if dashboard_env["real_victim"]:
        assert [s.label for s in at.status][0].startswith("Detoxified in")
        metrics = {m.label: m.value for m in at.metric}
        assert set(metrics) == {"Prediction before", "Prediction after", "True label"}
        assert metrics["True label"].split()[0].isdigit()
        assert len(at.get("image")) == 3  # input | trigger map | detoxified
    else:  # no loadable victim registered: the page says why instead of raising
        assert [s.label for s in at.status] == ["Could not detoxify this image"]
        assert "load_classifier" in at.error[0].value


@pytest.mark.parametrize("page", PAGES)
def test_empty_store_gives_guidance(empty_env, page):
    at = run_page(page)
    assert "make demo" in texts(at)


@pytest.mark.parametrize("page", PAGES)
def test_missing_database_gives_guidance(tmp_path, monkeypatch, page):
    import streamlit as st

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}")
    st.cache_data.clear()
    at = run_page(page)
    assert "No tracking database" in texts(at) and "make demo" in texts(at)
    assert not (tmp_path / "nowhere").exists()  # the dashboard never creates a store


def test_unreachable_server_gives_guidance(monkeypatch):
    import socket

    import streamlit as st

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    st.cache_data.clear()
    at = run_page(PAGES[0])
    assert "unreachable" in texts(at)
