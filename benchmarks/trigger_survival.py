"""How much of a trigger survives DataElixir's diffuse-and-denoise rounds, and what the same rounds cost a clean image.

    .venv/bin/python benchmarks/trigger_survival.py --threads 1          # → results/trigger_survival_cifar10_cpu.json

For each attack, ``--per-class`` CIFAR-10 test images per class (read from the shared archive) are paired with
their triggered versions (``attack.apply_trigger``). Both go through the same chain of ``--rounds`` purification
rounds, exactly as DataElixir's candidate construction chains them (noise to level T with ``q_sample``, reverse
process to 0, the output is the next round's input), with **the same noise for both members of a pair**, so the
difference between the two outputs is what is left of the trigger. Per round it reports

* ``trigger_remaining``: mean over images of ‖purified(triggered) − purified(clean)‖₂ / ‖triggered − clean‖₂
  (1 = the trigger passes untouched, 0 = both images end up identical);
* ``clean_psnr_db``: mean PSNR of the purified clean image against the original (what the same strength costs
  benign content);
* with ``--victim ATTACK=FOLDER`` (a classifier saved by ``save_classifier``, e.g. an attack table entry's
  ``victim``, or a victim-store name such as ``cifar10-fast/badnets``, whose stored attack then makes the
  triggers): ``victim_asr``, the share of purified triggered images it still assigns the target, and
  ``victim_clean_acc``, its accuracy on the purified clean images (round 0 = the unpurified inputs). This is what
  DataElixir's label-transition stage sees: a poisoned sample is only caught if its label moves off the target.

The sampler is DDIM (eta 0, ``--stride``) so that T = 500 stays affordable on a CPU; with the pair sharing its
noise draw the comparison is deterministic given ``--seed``. The purifier is the shipped one unless
``--purifier`` names a folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cifar_small import DEFAULT_ARCHIVE, read_cifar
from detoxops.attacks import registry
from detoxops.data.tensors import to_tensor
from detoxops.diffusion import denoise
from detoxops.diffusion.train import psnr
from detoxops.diffusion.unet import default_purifier, load_purifier
from detoxops.fileio import atomic_write_text
from detoxops.metrics import attack_success_rate, clean_accuracy
from detoxops.models import load_classifier, predict
from detoxops.models.store import victim_attack
from diffusion_throughput import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def survival(purifier, clean: torch.Tensor, triggered: torch.Tensor, T: int, rounds: int, stride: int,  # noqa: N803
             seed: int, batch: int, victim=None, labels: np.ndarray | None = None) -> list[dict[str, float]]:
    """Chained rounds on the pair; per round the mean trigger fraction left and the clean PSNR (and, with a
    victim, its target rate on the triggered side and its accuracy on the clean side; entry 0 = the inputs)."""
    start_gap = (triggered - clean).flatten(1).norm(dim=1)
    keep = start_gap > 0  # an image the trigger does not change (e.g. already saturated) says nothing
    x_c, x_t = clean[keep], triggered[keep]
    gap0 = start_gap[keep]
    kept_labels = labels[keep.numpy()] if labels is not None else None
    gen = torch.Generator().manual_seed(seed)

    def victim_view(x_c: torch.Tensor, x_t: torch.Tensor) -> dict[str, float]:
        if victim is None:
            return {}
        return {"victim_asr": round(attack_success_rate(predict(victim, (x_t + 1) / 2), 0), 4),
                "victim_clean_acc": round(clean_accuracy(predict(victim, (x_c + 1) / 2), kept_labels), 4)}

    out = [{"round": 0, "trigger_remaining": 1.0} | victim_view(x_c, x_t)]
    for _ in range(rounds):
        next_c, next_t = [], []
        for b in range(0, len(x_c), batch):
            pair = torch.cat([x_c[b:b + batch], x_t[b:b + batch]])
            noise = torch.randn(pair[: len(pair) // 2].shape, generator=gen)
            x_T = purifier.schedule.q_sample(pair, T, torch.cat([noise, noise]))  # noqa: N806 - paper's name
            y = denoise(purifier, x_T, T, mode="ddim", stride=stride).clamp(-1, 1)
            next_c.append(y[: len(y) // 2])
            next_t.append(y[len(y) // 2:])
        x_c, x_t = torch.cat(next_c), torch.cat(next_t)
        remaining = (x_t - x_c).flatten(1).norm(dim=1) / gap0
        out.append({"round": len(out), "trigger_remaining": round(remaining.mean().item(), 4),
                    "clean_psnr_db": round(psnr(x_c, clean[keep]).mean().item(), 2)} | victim_view(x_c, x_t))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", default=str(DEFAULT_ARCHIVE))
    ap.add_argument("--attacks", nargs="+", default=["badnets", "blended", "sig", "bpp", "ftrojan"])
    ap.add_argument("--levels", nargs="+", type=int, default=[150, 300, 500], help="T values (DataElixir: 150)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stride", type=int, default=15)
    ap.add_argument("--per-class", type=int, default=13, help="test images per class (13 → 130, 117 non-target)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--purifier", default=None, help="purifier folder (default: the shipped CIFAR-10 one)")
    ap.add_argument("--victim", action="append", default=[], metavar="ATTACK=FOLDER",
                    help="a saved classifier poisoned by ATTACK (target 0); repeatable")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-json", default=str(RESULTS / "trigger_survival_cifar10_cpu.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    purifier = load_purifier(args.purifier) if args.purifier else default_purifier("cifar10")
    images, labels = read_cifar(args.archive, "test", args.per_class)
    images, labels = images[labels != 0], labels[labels != 0]  # the triggered test set: non-target images only
    clean = to_tensor(images) * 2 - 1  # diffusion space [-1, 1]
    victim_refs = dict(spec.split("=", 1) for spec in args.victim)  # attack -> folder or victim-store name
    victims = {k: load_classifier(v) for k, v in victim_refs.items()}
    rows = []
    for name in args.attacks:
        stored = victim_attack(victim_refs[name]) if name in victim_refs else None
        # a stored victim brings its own attack (fitted state included: TrojanNN's optimised trigger, …)
        attack = stored or registry.create(name, target=0, poison_ratio=0.1, seed=args.seed,
                                           image_size=images.shape[1], num_classes=10)
        if attack.needs_fit and stored is None:
            print(f"{name}: skipped (needs fitting)", file=sys.stderr)
            continue
        triggered = to_tensor(attack.apply_trigger(images)) * 2 - 1
        for T in args.levels:  # noqa: N806
            t0 = time.time()
            per_round = survival(purifier, clean, triggered, T, args.rounds, args.stride, args.seed, args.batch,
                                 victim=victims.get(name), labels=labels)
            rows.append({"attack": name, "T": T, "rounds": per_round, "seconds": round(time.time() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine_info(torch.device("cpu")),
              "command": "python benchmarks/trigger_survival.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "purifier": args.purifier or "shipped cifar10-32", "images": int(len(images)),
              "sampler": {"mode": "ddim", "eta": 0.0, "stride": args.stride}, "seed": args.seed,
              "victims": victim_refs, "rows": rows}
    out = Path(args.out_json)
    atomic_write_text(out, json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
