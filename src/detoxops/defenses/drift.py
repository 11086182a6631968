"""Label drift: does a defense move a classifier's labels of *clean* images towards one class?

A defense can itself fire a backdoor (measured: SampDetox's restorations of clean CIFAR-10 images are labelled as
the target by 68–99 % of the LF and 35–84 % of the Refool store victims, which learned "not JPEG-like" on their JPEG
source and read the restorations' faint noise as their trigger; docs/sampdetox.md, docs/attacks.md "JPEG sources").
Clean accuracy alone hides the cause; the class the changed labels flow into shows it. On clean
images from the deployment domain, run the defense and compare the classifier's labels before and after:

* ``inflow[c]`` = share of images labelled ``c`` after the defense − share labelled ``c`` before. A defense that
  fires no backdoor spreads its changed labels over the classes (inflows of a few points either way); one that fires a
  backdoor sends them to its target (a large positive inflow into one class).
* The drift is **flagged** when the largest inflow reaches ``max_inflow`` (absolute share) **and** is unlikely to be
  chance: among the images whose label changed, the number that moved into that class is tested against "a changed
  label goes to any of the other C − 1 classes alike" (one-sided binomial, ``p_value`` ≤ ``alpha``; with two
  classes, "a change is as likely into the class as out of it"). The threshold
  bounds the effect; the test keeps a small sample from flagging on a few images (on 20 images, two moving into one
  class are already a 10-point inflow). The flagged class is then the likely target of a backdoor that the defense
  itself triggers; either way its outputs behind this defense are not to be trusted.

No ground-truth labels are needed: the classifier's own labels of the undefended images are the reference, so the
check runs on any unlabelled clean sample of the deployment domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

__all__ = ["LabelDrift", "label_drift", "DEFAULT_MAX_INFLOW", "DEFAULT_ALPHA"]

DEFAULT_MAX_INFLOW = 0.10
"""Flag at a 10-point net inflow into one class (measured spread on backdoor-free drift: benchmarks/
defended_clean_labels.py, docs/sampdetox.md)."""

DEFAULT_ALPHA = 0.01
"""Significance level of the binomial test that the inflow is not chance."""


@dataclass(frozen=True)
class LabelDrift:
    n: int
    changed: float
    """Share of images whose label the defense changed."""
    inflow: np.ndarray
    """(C,) share labelled c after the defense minus share labelled c before."""
    top_class: int
    top_inflow: float
    max_inflow: float
    flagged: bool
    p_value: float = 1.0
    """Chance of at least this many changed labels landing in ``top_class`` if changed labels went to any other
    class alike."""
    alpha: float = DEFAULT_ALPHA

    def to_dict(self) -> dict:
        return {"n": self.n, "changed": self.changed, "inflow": [float(v) for v in self.inflow],
                "top_class": self.top_class, "top_inflow": self.top_inflow, "max_inflow": self.max_inflow,
                "p_value": self.p_value, "alpha": self.alpha, "flagged": self.flagged}

    def describe(self, class_names: list[str] | None = None) -> str:
        name = class_names[self.top_class] if class_names else str(self.top_class)
        head = (f"label drift on {self.n} clean images: {100 * self.changed:.1f} % changed label; largest net "
                f"inflow {100 * self.top_inflow:+.1f} points into class {name}")
        if self.flagged:
            return (head + f" (>= {100 * self.max_inflow:.0f}): FLAGGED - the defense sends clean images to one "
                    "class, so it likely fires a backdoor in this model itself; do not trust this model's outputs "
                    "behind this defense (lower noise levels did not help where measured: docs/sampdetox.md)")
        if self.top_inflow >= self.max_inflow:
            return head + (f" (>= {100 * self.max_inflow:.0f}, but p = {self.p_value:.2g} > {self.alpha:g}: too few "
                           "images to tell it from chance; check more clean images)")
        return head + f" (< {100 * self.max_inflow:.0f}): no class draws the changed labels"


def label_drift(before: np.ndarray, after: np.ndarray, num_classes: int,
                max_inflow: float = DEFAULT_MAX_INFLOW, alpha: float = DEFAULT_ALPHA) -> LabelDrift:
    """The drift of labels ``before`` → ``after`` (the classifier's labels of the same clean images without and
    with the defense)."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape or before.ndim != 1 or len(before) == 0:
        raise ValueError(f"label drift needs two equal-length non-empty label vectors, got shapes {before.shape} "
                         f"and {after.shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    for what, labels in (("before", before), ("after", after)):
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels {what} the defense must be integers in [0, {num_classes}), got "
                             f"{labels.dtype} in [{labels.min()}, {labels.max()}]")
    if not 0.0 < max_inflow <= 1.0:
        raise ValueError(f"max_inflow must be in (0, 1], got {max_inflow}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    n = len(before)
    inflow = (np.bincount(after, minlength=num_classes) - np.bincount(before, minlength=num_classes)) / n
    top = int(np.argmax(inflow))
    changed = before != after
    into_top = int(np.sum(changed & (after == top)))
    # one-sided binomial tail P(X >= into_top), X ~ Bin(changed images, 1 / (C - 1)); with two classes every change
    # goes to the other one, so the null becomes a sign test: a change is as likely into the class as out of it
    share = 1.0 / (num_classes - 1) if num_classes > 2 else 0.5
    p_value = float(binom.sf(into_top - 1, int(changed.sum()), share)) if into_top else 1.0
    return LabelDrift(n=n, changed=float(np.mean(changed)), inflow=inflow, top_class=top,
                      top_inflow=float(inflow[top]), max_inflow=float(max_inflow),
                      flagged=bool(inflow[top] >= max_inflow and p_value <= alpha), p_value=p_value,
                      alpha=float(alpha))
