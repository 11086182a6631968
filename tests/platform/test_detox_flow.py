"""The detox flow on tiny digits under two attacks: CA / PA / ASR per attack × defense in the returned table and
as nested MLflow runs (attack → defense), where the dashboard's Defense results page reads them."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.platform

# 400 digits; 15 epochs: BadNets ASR ~60 %, Blended ~100 % without defense (8 epochs: BadNets is not learned yet)
TINY = ["victim.epochs=15", "data.train_per_class=40", "data.test_per_class=8"]
ATTACKS = ["badnets", "blended"]


def test_detox_flow_records_attack_x_defense_rows(tmp_stores, tmp_path):
    from flows.detox import detox

    client, stores = tmp_stores(tmp_path, "detox")
    overrides = TINY + stores
    table = detox(ATTACKS, ["sampdetox"], "digits", "params.yaml", overrides, max_images=16, dvc_root=str(tmp_path))

    assert [(r["attack"], r["defense"]) for r in table] == [(a, d) for a in ATTACKS for d in ("none", "sampdetox")]
    for row in table:
        for key in ("ca", "pa", "asr"):
            assert 0.0 <= row[key] <= 1.0  # fractions (the printed table and results.csv: percent)
    blended_none = next(r for r in table if r["attack"] == "blended" and r["defense"] == "none")
    assert blended_none["asr"] > 0.5  # the victim is backdoored, or the evaluation says nothing

    exp = client.get_experiment_by_name("detoxops/detox")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("detoxops.kind") == "report")
    assert parent.data.params["detox.attacks"] == "badnets,blended"
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "results")] == ["results/results.csv"]
    attack_runs = {r.data.tags["detoxops.attack"]: r for r in runs if r.data.tags.get("detoxops.kind") == "attack"
                   and r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(attack_runs) == set(ATTACKS)
    defense_runs = [r for r in runs if r.data.tags.get("detoxops.kind") == "defense"
                    and r.data.tags.get("mlflow.parentRunId") in {a.info.run_id for a in attack_runs.values()}]
    recorded = {(r.data.tags["detoxops.attack"], r.data.tags["detoxops.defense"]) for r in defense_runs}
    assert recorded == {(a, d) for a in ATTACKS for d in ("none", "sampdetox")}
    for r in defense_runs:
        assert {"ca", "pa", "asr"} <= set(r.data.metrics) and r.data.tags["detoxops.data_version"]
        row = next(t for t in table if (t["attack"], t["defense"]) == (r.data.tags["detoxops.attack"],
                                                                        r.data.tags["detoxops.defense"]))
        assert r.data.metrics["asr"] == pytest.approx(row["asr"])
