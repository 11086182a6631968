"""Is the patch repair limited by its region or by its inpainting? (issue #20)

On the validation half's triggered images of one store victim, inpaint (the repair's own RePaint step, no gate, no
label confirmation, no global path) (a) the region the calibrated context map gives, (b) the true trigger mask and
its dilations (an oracle), (c) every flagged pixel at a few region thresholds; report the victim's ASR / PA on each
and how often a region covers every trigger pixel. The context maps are the ones ``patch_repair_eval.py confirm
--split val`` keeps in ``--cache`` (computed when missing).

    python benchmarks/patch_region_oracle.py --attack badnets --cache runs/patch_repair_cache \\
        --out benchmarks/results/patch_region_oracle_badnets.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import patch_repair_eval as pre  # noqa: E402
from detoxops.config import PatchRepairConfig  # noqa: E402
from detoxops.data import from_tensor, to_tensor  # noqa: E402
from detoxops.defenses.base import make_generator  # noqa: E402
from detoxops.defenses.map_quality import changed_pixels  # noqa: E402
from detoxops.defenses.patch_repair import PatchRepair  # noqa: E402
from detoxops.diffusion import load_purifier  # noqa: E402
from detoxops.models import load_classifier, predict  # noqa: E402
from detoxops.models.store import victim_attack  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--store", default="cifar10-fast")
    ap.add_argument("--attack", default="badnets")
    ap.add_argument("--purifier", type=Path, default=pre.SHIPPED_PURIFIER)
    ap.add_argument("--calibration", type=Path, default=Path("benchmarks/results/patch_repair_calibration_val_rates.json"))
    ap.add_argument("--thresholds", default="0.3,0.25", help="extra region thresholds for the every-flagged-pixel rows")
    ap.add_argument("--n-poisoned", type=int, default=100)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cal = json.loads(args.calibration.read_text())["thresholds"]
    purifier = load_purifier(args.purifier)
    repair = PatchRepair(purifier, PatchRepairConfig(**cal, confirm="none"))
    clean = pre.clean_test(args.data)
    ref = f"{args.store}/{args.attack}"
    model, attack = load_classifier(ref).float().eval(), victim_attack(ref)
    pidx, triggered, true_labels = pre.triggered_set(clean, "val", attack, args.n_poisoned, args.seed)
    # the maps `confirm --split val` stored for these images
    maps = pre.triggered_context_maps(args.cache, "val", args.attack, repair, triggered, args.batch, args.seed,
                                      pre.purifier_key(args.purifier))
    cmap = torch.from_numpy(maps)[:, None].float()
    mask = torch.from_numpy(changed_pixels(clean.images[pidx], triggered, tolerance=0))[:, None]
    x = to_tensor(triggered) * 2 - 1

    def rates(images: torch.Tensor) -> dict:
        p = predict(model, from_tensor(((images + 1) / 2).clamp(0, 1)))
        return {"asr": 100 * float(np.mean(p == attack.target)), "pa": 100 * float(np.mean(p == true_labels))}

    def dilate(m: torch.Tensor, k: int) -> torch.Tensor:
        return F.max_pool2d(m.float(), 2 * k + 1, stride=1, padding=k) > 0 if k else m

    everyone = torch.ones(len(x), dtype=torch.bool)
    regions = {"map region (peak component, dilate 1)": repair.region(cmap, everyone)}
    regions.update({f"oracle: trigger mask, dilate {k}": dilate(mask, k) for k in (0, 1, 2)})
    for t in [cal["pixel_threshold"], *map(float, filter(None, args.thresholds.split(",")))]:
        regions[f"every flagged pixel > {t:.3f}, dilate 1"] = dilate(cmap > t, 1)
    rows = [{"region": "none (the triggered input)", **rates(x)}]
    for name, region in regions.items():
        with torch.no_grad():
            out = repair.repair(x, region, make_generator(args.seed + 1))
        rows.append({"region": name, **rates(out),
                     "covers_trigger": float((region | ~mask).flatten(1).all(1).float().mean()),
                     "median_pixels": float(region.flatten(1).sum(1).float().median())})
        print(json.dumps(rows[-1]), flush=True)
    peak = cmap.flatten(1).argmax(1)
    record = {"command": shlex.join(["python", *sys.argv]), "attack": args.attack, "victim": ref,
              "n_poisoned": len(pidx), "thresholds": cal, "purifier": str(args.purifier),
              "peak_inside_trigger": float(mask.flatten(1)[torch.arange(len(x)), peak].float().mean()),
              "trigger_pixels_flagged": float((cmap[mask] > cal["pixel_threshold"]).float().mean()),
              "rows": rows}
    pre._write(args.out, record)


if __name__ == "__main__":
    main()
