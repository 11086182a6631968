"""Choosing the default detox setting from a sweep, by a stated rule, on the validation split only.

Rule (issue #10): among the swept settings, the one with the lowest mean ASR over the attacks, subject to a
mean clean-accuracy drop (vs no defense, per attack, then averaged) of at most ``max_ca_drop`` points. Ties
(within 0.01 points of ASR) go to the smaller CA drop. When no setting meets the CA bound, the rule falls back
to the setting with the smallest CA drop, and says so. Also returns the ASR-vs-CA Pareto frontier.

Units: the rows' rates and the summaries are fractions (``detoxops.metrics``); ``max_ca_drop`` is in percentage
points, as ``params.sweep.max_ca_drop`` states it, and the explanation shows percent. Comparisons allow float
rounding (:data:`ROUNDING`): a drop of exactly the bound meets it, whichever unit its rates were computed in.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from detoxops.metrics import percent

__all__ = ["summarise_settings", "select_setting", "pareto_frontier"]

ROUNDING = 1e-9
"""Float slack of the rule's comparisons (fractions): far below one image in any test set."""
TIE = 1e-4
"""ASR within this of the best counts as tied (0.01 points)."""


def summarise_settings(rows: list[dict[str, Any]], baseline: str = "none") -> list[dict[str, Any]]:
    """Rows ``{setting, attack, ca, pa, asr, ...}`` (fractions) → one summary per setting: mean / max ASR, mean PA,
    mean / max CA drop (fractions).

    A setting only counts attacks for which the baseline row exists; the CA drop is ``ca(baseline) - ca``.
    """
    base_ca = {r["attack"]: r["ca"] for r in rows if r["setting"] == baseline}
    if not base_ca:
        raise ValueError(f"no rows for the baseline setting {baseline!r}")
    per_setting: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["attack"] in base_ca:
            per_setting[r["setting"]].append(r)
    summaries = []
    for setting, rs in per_setting.items():
        drops = [base_ca[r["attack"]] - r["ca"] for r in rs]
        summaries.append(
            {
                "setting": setting,
                "attacks": sorted(r["attack"] for r in rs),
                "mean_asr": float(np.mean([r["asr"] for r in rs])),
                "max_asr": float(np.max([r["asr"] for r in rs])),
                "mean_pa": float(np.mean([r["pa"] for r in rs])),
                "mean_ca_drop": float(np.mean(drops)),
                "max_ca_drop": float(np.max(drops)),
            }
        )
    return sorted(summaries, key=lambda s: (s["mean_asr"], s["mean_ca_drop"]))


def select_setting(
    rows: list[dict[str, Any]], max_ca_drop: float = 3.0, baseline: str = "none"
) -> tuple[dict[str, Any], str]:
    """(chosen summary, explanation) by the module's rule (rows in fractions, ``max_ca_drop`` in points); the
    baseline itself is never chosen."""
    summaries = [s for s in summarise_settings(rows, baseline) if s["setting"] != baseline]
    if not summaries:
        raise ValueError("no candidate settings besides the baseline")
    n_attacks = max(len(s["attacks"]) for s in summaries)
    complete = [s for s in summaries if len(s["attacks"]) == n_attacks]
    bound = max_ca_drop / 100.0  # points -> fraction
    feasible = [s for s in complete if s["mean_ca_drop"] <= bound + ROUNDING]
    if feasible:
        best_asr = min(s["mean_asr"] for s in feasible)
        tied = [s for s in feasible if s["mean_asr"] <= best_asr + TIE + ROUNDING]
        chosen = min(tied, key=lambda s: s["mean_ca_drop"])
        why = (
            f"lowest mean ASR ({percent(chosen['mean_asr']):.2f}) over {n_attacks} attacks among {len(feasible)} of "
            f"{len(complete)} settings with mean CA drop <= {max_ca_drop} "
            f"(its drop: {percent(chosen['mean_ca_drop']):.2f})"
        )
    else:
        chosen = min(complete, key=lambda s: (s["mean_ca_drop"], s["mean_asr"]))
        why = (
            f"no setting keeps the mean CA drop <= {max_ca_drop}; fell back to the smallest drop "
            f"({percent(chosen['mean_ca_drop']):.2f}, mean ASR {percent(chosen['mean_asr']):.2f})"
        )
    return chosen, why


def pareto_frontier(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Settings not dominated in (mean ASR, mean CA drop), both lower-is-better; sorted by CA drop."""
    front = []
    for s in summaries:
        dominated = any(
            o is not s
            and o["mean_asr"] <= s["mean_asr"]
            and o["mean_ca_drop"] <= s["mean_ca_drop"]
            and (o["mean_asr"] < s["mean_asr"] or o["mean_ca_drop"] < s["mean_ca_drop"])
            for o in summaries
        )
        if not dominated:
            front.append(s)
    return sorted(front, key=lambda s: s["mean_ca_drop"])
