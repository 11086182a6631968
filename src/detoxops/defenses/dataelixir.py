"""DataElixir (Zhou et al., AAAI 2024): purify a poisoned training set with a diffusion model.

Read next to the paper's four stages (module per stage in ``detoxops.defenses.elixir``):

1. Candidate Set Construction — n rounds of noising to T and denoising; the last m intermediaries of each round,
   labelled by the victim model M (``elixir.candidates``), processed shard by shard and stored (resumable).
2. Anomalous Samples Identification — transition coefficient η (second-highest label count) vs τ splits the
   data into benign B, poisoned P and suspicious S (equation 3, ``elixir.transitions``).
3. Target Label Detection — per-label KL and count metrics of the pooled candidate sets of P ∪ S (equation 4)
   and the MAD anomaly index (``elixir.target_label``). No outlier label → the dataset is clean and kept as is.
4. Purified Dataset Generation — target-label samples in P get their candidate vote as label and the candidate
   at the 80th percentile of the distance as image (equation 5, ``elixir.purify``); target-label samples in S
   are labelled by a benign model trained on the purified set, then fine-tuned (``elixir.relabel``; with
   ``relabel_images: candidates`` it trains on every kept sample's purified candidate instead, the kind of image it
   labels; ``relabel: flagged`` gives it the target-label samples in P as well). Samples with other labels, and
   target-label samples in B, are kept unchanged (``purify`` widens the images replaced; ``target_rounds`` purifies
   again those purified images that end with a target label).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detoxops.config import DataElixirConfig, VictimConfig
from detoxops.data import ImageSet
from detoxops.defenses.elixir.candidates import (
    build_candidates,
    purification_rounds,
    purify_candidates,
    score_candidates,
    steps_per_image,
)
from detoxops.defenses.elixir.purification_cache import PurificationCache, content_digests, noise_keys
from detoxops.defenses.elixir.purify import select_at_percentile
from detoxops.defenses.elixir.relabel import relabel_suspicious
from detoxops.defenses.elixir.shards import DamagedShardError, ShardStore, open_work_store
from detoxops.defenses.elixir.target_label import TargetDetection, detect_target_labels, mad_anomaly_index
from detoxops.defenses.elixir.transitions import BENIGN, POISONED, SET_NAMES, SUSPICIOUS, analyse_transitions
from detoxops.diffusion.noise import KeyedNoise
from detoxops.progress import tqdm

__all__ = ["DataElixir", "SanitizeResult"]

log = logging.getLogger(__name__)

SHARD_ARRAYS = ("labels", "distances", "selected", "images")
CANDIDATE_FIELDS = {"T", "rounds", "keep_last", "sampler", "ddim_stride", "select_percentile", "shard_size",
                    "batch_size", "seed", "noise"}
PURIFICATION_FIELDS = ("T", "rounds", "keep_last", "sampler", "ddim_stride", "seed")
"""What a stored purification (``noise: per_image``) depends on besides the purifier and the image."""


@dataclass
class SanitizeResult:
    dataset: ImageSet  # the purified dataset (provenance and ground-truth poison flags carried over)
    decisions: dict[str, np.ndarray]  # one row per sample: set, eta, vote, chosen candidate, distance, final label
    detection: TargetDetection
    flagged: np.ndarray  # (N,) label changed by sanitisation (the paper's "detected")
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def target_labels(self) -> list[int]:
        return self.detection.target_labels

    @property
    def target_label(self) -> int | None:
        return self.detection.target_labels[0] if self.detection.target_labels else None

    @property
    def purified(self) -> ImageSet:
        return self.dataset

    @property
    def anomaly_index(self) -> dict[str, Any]:
        return self.detection.to_dict()

    def decisions_csv(self) -> str:
        cols = list(self.decisions)
        rows = [",".join(cols)]
        for i in range(len(self.flagged)):
            rows.append(",".join(str(self.decisions[c][i]) for c in cols))
        return "\n".join(rows) + "\n"


def module_fingerprint(module: torch.nn.Module) -> str:
    """16 hex digits of the SHA-256 of a network's state (names and values): what the candidate store keys a
    victim and a purifier by."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def purify_extra(mode: str, is_target: np.ndarray, benign: np.ndarray, distance: np.ndarray,
                 distant_mads: float) -> np.ndarray:
    """Which images stage 4 gives their purified candidate beyond the paper's (target-label samples in P ∪ S), by
    ``dataelixir.purify``: ``target_label`` adds the target-label samples in B (poison whose trigger kept its label,
    or that carried the target label already); ``target_distant`` only those of them whose chosen candidate lies
    more than ``distant_mads`` (consistent) MADs above their median distance — purification moved a triggered image
    further, in pixels and in the victim's features, than a clean one of the same class; ``all`` is every image."""
    if mode == "flagged":
        return np.zeros_like(is_target)
    if mode == "target_label":
        return is_target.copy()
    if mode == "target_distant":
        pool = is_target & benign
        far = np.zeros_like(is_target)
        far[pool] = mad_anomaly_index(distance[pool]) > distant_mads
        return far
    if mode == "all":
        return np.ones_like(is_target)
    raise ValueError(f"dataelixir.purify: unknown mode {mode!r}")


class DataElixir:
    """``DataElixir(purifier, cfg).sanitize(train, victim, workdir) -> SanitizeResult``."""

    def __init__(self, purifier, cfg: DataElixirConfig | None = None, victim_cfg: VictimConfig | None = None) -> None:
        self.purifier = purifier
        # the profile's preset for the purifier's image size (``auto``), so every later stage sees concrete values
        self.cfg = (cfg or DataElixirConfig()).resolved(getattr(purifier, "image_size", None))
        self.victim_cfg = victim_cfg or VictimConfig(epochs=self.cfg.relabel_epochs)
        if self.cfg.relabelled_image == "nearest" and self.cfg.noise != "per_image":
            raise ValueError("dataelixir.relabelled_image: nearest reads every candidate from the purification "
                             "cache, which needs dataelixir.noise: per_image")
        if self.cfg.T > purifier.schedule.T:
            raise ValueError(f"dataelixir.T = {self.cfg.T} exceeds the purifier's {purifier.schedule.T} levels")

    # ------------------------------------------------------------------ stage 1 (streamed, resumable)
    def work_store(self, train: ImageSet, victim: torch.nn.Module, workdir: str | Path) -> ShardStore:
        """The folder of this run's candidate shards, ``workdir/candidates/<key>/``, keyed by everything the
        candidates depend on: a re-run with other data, models, settings or purifier precision gets its own folder,
        an identical one resumes from finished shards."""
        c = self.cfg
        return open_work_store(Path(workdir) / "candidates", {
            "data": train.content_hash(), "victim": module_fingerprint(victim), **self._purifier_identity(),
            # only what changes the candidates: later stages (tau, rules, relabelling) can be re-run on them
            "cfg": c.model_dump(mode="json", include=CANDIDATE_FIELDS),
        })

    def _purifier_identity(self) -> dict[str, Any]:
        uses_bf16 = getattr(self.purifier, "uses_bf16", None)
        return {
            "purifier": module_fingerprint(self.purifier.unet),
            "schedule": hashlib.sha256(self.purifier.schedule.betas.double().cpu().numpy().tobytes()).hexdigest()[:16],
            "bf16": bool(uses_bf16(self.purifier.device)) if uses_bf16 is not None else False,
        }

    def purification_cache(self, workdir: str | Path) -> PurificationCache:
        """Where ``noise: per_image`` stores purified candidates by image content (``dataelixir.purification_cache``,
        else ``workdir/purification-cache``), keyed by the purifier and the round settings."""
        c = self.cfg
        root = Path(c.purification_cache) if c.purification_cache else Path(workdir) / "purification-cache"
        return PurificationCache(root, {**self._purifier_identity(), "format": 1,
                                        "cfg": {k: getattr(c, k) for k in PURIFICATION_FIELDS}})

    def purify(self, train: ImageSet, workdir: str | Path, shard_ids: list[int] | None = None,
               progress: bool = True) -> int:
        """The victim-independent half of stage 1 (``noise: per_image`` only): purify the images of the shards
        ``shard_ids`` (default: all) that the purification cache lacks, and store them there. A later
        :meth:`compute_shards` / :meth:`sanitize` with any victim then only scores them. Returns how many images
        were purified."""
        if self.cfg.noise != "per_image":
            raise ValueError("DataElixir.purify stores purifications by image content, which needs "
                             "dataelixir.noise: per_image")
        bounds = self.shard_bounds(len(train))
        ids = list(range(len(bounds))) if shard_ids is None else [int(k) for k in shard_ids]
        if any(k < 0 or k >= len(bounds) for k in ids):
            raise ValueError(f"shard ids {ids} out of range: {len(train)} images make {len(bounds)} shards")
        cache = self.purification_cache(workdir)
        per_image = steps_per_image(self.cfg)
        bar = tqdm(total=sum(bounds[k][1] - bounds[k][0] for k in ids) * per_image,
                   desc=f"DataElixir purification ({len(ids)} shards)", unit="step", disable=not progress)
        done = 0
        for k in ids:
            x = np.array(train.images[bounds[k][0] : bounds[k][1]])
            _, n_new = self._purified(cache, x, on_step=bar.update)
            done += n_new
        bar.close()
        return done

    def _purified(self, cache: PurificationCache, x: np.ndarray, on_step) -> tuple[np.ndarray, int]:
        """The candidates ``(n, K, H, W, C)`` uint8 of uint8 images ``x``: stored ones loaded, the others purified
        batch by batch (each with its own content-keyed noise) and stored. Returns them and how many were new."""
        c = self.cfg
        if not len(x):
            return np.zeros((0, 0, *x.shape[1:]), dtype=np.uint8), 0
        digests = content_digests(x, c.seed)
        cands, found = cache.get(digests)
        per_image = steps_per_image(c)
        on_step(int(found.sum()) * per_image)
        missing = np.flatnonzero(~found)
        for b in range(0, len(missing), c.batch_size):
            rows = missing[b : b + c.batch_size]
            x01 = torch.from_numpy(x[rows]).permute(0, 3, 1, 2).float().div(255)
            purified = purify_candidates(self.purifier, x01, c, KeyedNoise(noise_keys(digests[rows])),
                                         on_step=on_step)
            block = (purified.permute(0, 1, 3, 4, 2) * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
            cache.put(digests[rows], block)
            if cands is None:
                cands = np.zeros((len(x), *block.shape[1:]), dtype=np.uint8)
            cands[rows] = block
        return cands, len(missing)

    def shard_bounds(self, n: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of each candidate shard of an ``n``-image dataset (``dataelixir.shard_size``)."""
        return [(start, min(start + self.cfg.shard_size, n)) for start in range(0, n, self.cfg.shard_size)]

    def compute_shards(
        self, train: ImageSet, victim: torch.nn.Module, workdir: str | Path, shard_ids: list[int] | None = None,
        progress: bool = True,
    ) -> list[int]:
        """Stage 1 for the shards ``shard_ids`` only (default: all), each stored as it finishes; stored shards
        are skipped. Shards are independent (each draws its noise from the seed and its own index), so disjoint
        lists may run at the same time in threads, processes or machines that share ``workdir`` (the scale-out
        of ``flows.sanitize``); :meth:`candidate_sets` then only loads them. Returns the shards this call computed."""
        victim = victim.to(self.purifier.device).eval()
        store = self.work_store(train, victim, workdir)
        bounds = self.shard_bounds(len(train))
        ids = list(range(len(bounds))) if shard_ids is None else [int(k) for k in shard_ids]
        if any(k < 0 or k >= len(bounds) for k in ids):
            raise ValueError(f"shard ids {ids} out of range: {len(train)} images make {len(bounds)} shards of "
                             f"{self.cfg.shard_size}")
        todo = [k for k in ids if not store.done(k)]
        per_image = steps_per_image(self.cfg)
        bar = tqdm(total=sum(bounds[k][1] - bounds[k][0] for k in todo) * per_image,
                   desc=f"DataElixir candidates, shards {todo}", unit="step", disable=not progress)
        cache = self.purification_cache(workdir) if self.cfg.noise == "per_image" else None
        for k in todo:
            self._compute_shard(store, train, victim, k, *bounds[k], on_step=bar.update, cache=cache)
        bar.close()
        return todo

    def candidate_sets(
        self, train: ImageSet, victim: torch.nn.Module, workdir: str | Path, progress: bool = True
    ) -> dict[str, np.ndarray]:
        """Per sample: candidate labels (N, K), distances (N, K), the selected candidate index and image. Shards
        stored by an earlier or a concurrent run (:meth:`compute_shards`) are loaded, the others computed."""
        victim = victim.to(self.purifier.device).eval()
        store = self.work_store(train, victim, workdir)
        n = len(train)
        bounds = self.shard_bounds(n)
        loaded: dict[int, dict[str, np.ndarray]] = {}
        cache: PurificationCache | None = None  # opened when a shard needs computing
        per_image = steps_per_image(self.cfg)  # progress in denoising steps: it moves within a batch, too
        bar = tqdm(total=n * per_image, desc=f"DataElixir candidates ({n} img x {per_image} denoising steps)",
                   unit="step", disable=not progress)
        for k, (start, stop) in enumerate(bounds):
            if store.done(k):
                try:
                    loaded[k] = store.load(k, keys=set(SHARD_ARRAYS), length=stop - start)
                except DamagedShardError as exc:  # a killed disk write, a corrupted file: recompute it
                    log.warning("%s; recomputing shard %d", exc, k)
                    store.discard(k)
                else:
                    bar.update((stop - start) * per_image)
                    continue
            if cache is None and self.cfg.noise == "per_image":
                cache = self.purification_cache(workdir)
            loaded[k] = self._compute_shard(store, train, victim, k, start, stop, on_step=bar.update, cache=cache)
        bar.close()
        return {key: np.concatenate([loaded[k][key] for k in range(len(bounds))]) for key in SHARD_ARRAYS}

    def _compute_shard(self, store: ShardStore, train: ImageSet, victim: torch.nn.Module, k: int, start: int,
                       stop: int, on_step, cache: PurificationCache | None = None) -> dict[str, np.ndarray]:
        c = self.cfg
        if c.noise == "per_image":
            if cache is None:
                raise ValueError("dataelixir.noise: per_image needs the purification cache")
            return self._compute_shard_by_content(store, cache, train, victim, k, start, stop, on_step)
        # one generator per shard: a resumed or a parallel run draws exactly the noise an uninterrupted one would
        gen = torch.Generator(device=self.purifier.device).manual_seed(c.seed * 100_003 + k)
        parts: dict[str, list[np.ndarray]] = {key: [] for key in SHARD_ARRAYS}
        for b in range(start, stop, c.batch_size):
            x = np.array(train.images[b : min(b + c.batch_size, stop)])  # copy: the source may be a read-only memmap
            x01 = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)
            cand = build_candidates(self.purifier, victim, x01, c, gen, on_step=on_step)
            dist = cand.distances.numpy()
            sel = select_at_percentile(dist, c.select_percentile)
            chosen = cand.images[torch.arange(len(sel)), torch.from_numpy(sel)]
            parts["labels"].append(cand.labels.numpy().astype(np.int16))
            parts["distances"].append(dist.astype(np.float32))
            parts["selected"].append(sel.astype(np.int16))
            parts["images"].append((chosen.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).numpy())
        arrays = {key: np.concatenate(v) for key, v in parts.items()}
        store.save(k, **arrays)
        return arrays

    def _compute_shard_by_content(self, store: ShardStore, cache: PurificationCache, train: ImageSet,
                                  victim: torch.nn.Module, k: int, start: int, stop: int,
                                  on_step) -> dict[str, np.ndarray]:
        """``noise: per_image``: the shard's candidates from the purification cache (purifying what it lacks), then
        scored by the victim. Candidates are scored as stored (uint8), the form a purified image is handed back in."""
        c = self.cfg
        x = np.array(train.images[start:stop])  # copy: the source may be a read-only memmap
        cands, _ = self._purified(cache, x, on_step)
        parts: dict[str, list[np.ndarray]] = {key: [] for key in SHARD_ARRAYS}
        device = self.purifier.device
        for b in range(0, len(x), c.batch_size):
            x01 = torch.from_numpy(x[b : b + c.batch_size]).permute(0, 3, 1, 2).float().div(255).to(device)
            block = cands[b : b + c.batch_size]
            cand01 = torch.from_numpy(block).permute(0, 1, 4, 2, 3).float().div(255).to(device)
            labels, dists = score_candidates(victim, x01, cand01)
            dist = dists.float().cpu().numpy()
            sel = select_at_percentile(dist, c.select_percentile)
            parts["labels"].append(labels.cpu().numpy().astype(np.int16))
            parts["distances"].append(dist.astype(np.float32))
            parts["selected"].append(sel.astype(np.int16))
            parts["images"].append(block[np.arange(len(sel)), sel])
        arrays = {key: np.concatenate(v) for key, v in parts.items()}
        store.save(k, **arrays)
        return arrays

    def _purify_again(self, images: np.ndarray, rounds: int) -> np.ndarray:
        """``rounds`` more purification rounds of uint8 HWC images, batch by batch, from a noise stream of their
        own (independent of every shard's; ``noise: per_image``: each image's own, keyed by its content):
        deterministic given ``dataelixir.seed``."""
        c = self.cfg
        seed = int(np.random.SeedSequence([c.seed, 4]).generate_state(1)[0])
        gen = torch.Generator(device=self.purifier.device).manual_seed(seed)
        keys = noise_keys(content_digests(np.asarray(images), seed)) if c.noise == "per_image" else None
        out = np.empty_like(images)
        for b in range(0, len(images), c.batch_size):
            # the same conversion as the candidate shards (a permuted view, not data.tensors.to_tensor's contiguous
            # copy: the UNet's output differs in its last bits between the two memory layouts)
            x01 = torch.from_numpy(np.array(images[b : b + c.batch_size])).permute(0, 3, 1, 2).float().div(255)
            noise = gen if keys is None else KeyedNoise(keys[b : b + c.batch_size])
            y = purification_rounds(self.purifier, x01, c, rounds, noise)
            out[b : b + c.batch_size] = (y.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return out

    # ------------------------------------------------------------------ stages 2-4
    def sanitize(
        self, train: ImageSet, victim: torch.nn.Module, workdir: str | Path, progress: bool = True
    ) -> SanitizeResult:
        c = self.cfg
        if c.relabel_init == "victim" and not getattr(victim, "detoxops_spec", None):
            # checked before the candidates (the long part): fine-tuning runs detoxops's own training recipe
            raise ValueError(f"dataelixir.relabel_init: victim fine-tunes the victim with detoxops's recipe, but this "
                             f"victim ({type(victim).__name__}) was not built by detoxops; use relabel_init: scratch")
        num_classes = train.num_classes
        labels = np.asarray(train.labels)
        cand = self.candidate_sets(train, victim, workdir, progress=progress)
        cand_labels = cand["labels"].astype(np.int64)

        # stage 2: benign / poisoned / suspicious from the label transitions
        tr = analyse_transitions(cand_labels, labels, num_classes, c.tau, c.mixed)
        anomalous = tr.sets != BENIGN

        # stage 3: target label(s) by MAD outliers of the per-label KL and count metrics
        detection = detect_target_labels(tr.counts, labels, anomalous, num_classes, c.anomaly_threshold,
                                         c.target_rule, min_support=math.ceil(c.min_target_share * len(labels)))

        # stage 4: purified dataset — only target-label samples in P ∪ S change
        images = np.array(train.images, copy=True)
        new_labels = labels.copy()
        is_target = np.isin(labels, detection.target_labels)
        by_model = is_target & ((tr.sets == SUSPICIOUS) | ((tr.sets == POISONED) & (c.relabel == "flagged")))
        in_p = is_target & (tr.sets == POISONED) & ~by_model  # the paper: P takes its candidates' vote
        images[in_p] = cand["images"][in_p]
        new_labels[in_p] = tr.consensus[in_p]
        agreed = np.zeros(len(labels), dtype=bool)
        if by_model.any():  # S (and P under relabel: flagged): the relabelling model
            keep = ~by_model
            trained_on = cand["images"] if c.relabel_images == "candidates" else images
            current = ImageSet(images=trained_on[keep], labels=new_labels[keep], class_names=train.class_names)
            arch = getattr(victim, "detoxops_spec", {}).get("arch", "small_cnn")
            relabels, agree = relabel_suspicious(
                current, cand["images"][by_model], tr.consensus[by_model], arch, self.victim_cfg,
                c.finetune_epochs, c.finetune_lr_scale, progress=progress,
                query_images=train.images[by_model] if c.relabel_view == "input" else None,
                init=victim if c.relabel_init == "victim" else None,
            )
            images[by_model] = cand["images"][by_model]
            new_labels[by_model] = relabels
            agreed[by_model] = agree

        changed_image = in_p | by_model
        chosen = np.take_along_axis(cand["distances"], cand["selected"][:, None].astype(np.int64), 1)[:, 0]
        if c.purify != "flagged" and len(detection.target_labels):
            # after the relabelling model, which trains on the dataset as the paper leaves it
            extra = purify_extra(c.purify, is_target, tr.sets == BENIGN, chosen, c.distant_mads) & ~changed_image
            images[extra] = cand["images"][extra]
            changed_image |= extra

        handed = np.where(changed_image, cand["selected"].astype(np.int64), -1)  # candidate handed back, -1: own
        away = changed_image & ~np.isin(new_labels, detection.target_labels)  # relabelled away from the target
        if c.relabelled_image == "input":
            images[away] = train.images[away]
            changed_image &= ~away
            handed[away] = -1
        elif c.relabelled_image == "nearest" and away.any():
            rows = np.flatnonzero(away)
            every, _ = self._purified(self.purification_cache(workdir), np.array(train.images[rows]),
                                      on_step=lambda n: None)  # all stored by stage 1: nothing is purified here
            nearest = cand["distances"][rows].argmin(1)
            images[rows] = every[np.arange(len(rows)), nearest]
            handed[rows] = nearest

        repurified = np.zeros(len(labels), dtype=bool)
        if c.target_rounds and len(detection.target_labels):
            # a purified image that keeps a target label is the one kind whose trigger remnant can still teach the
            # backdoor (under another label it teaches the opposite): it goes through more rounds
            repurified = changed_image & np.isin(new_labels, detection.target_labels)
            images[repurified] = self._purify_again(images[repurified], c.target_rounds)

        flagged = new_labels != labels
        m = c.keep_last
        decisions = {
            "index": np.arange(len(labels)),
            "source_index": np.asarray(train.source_index),
            "label": labels,
            "set": np.array([SET_NAMES[int(s)] for s in tr.sets]),
            "eta": tr.eta,
            "vote": tr.consensus,
            "target_label": is_target.astype(int),
            "chosen_round": np.where(handed >= 0, handed // m, -1),
            "chosen_step": np.where(handed >= 0, handed % m, -1),
            "chosen_distance": np.round(chosen, 5),
            "relabel_agreed": agreed.astype(int),
            "repurified": repurified.astype(int),
            "final_label": new_labels,
            "flagged": flagged.astype(int),
            "poisoned_true": np.asarray(train.poisoned).astype(int),
        }
        meta = dict(train.meta)
        meta["sanitize"] = {
            "method": "dataelixir",
            "params": c.model_dump(mode="json"),
            "target_labels": detection.target_labels,
            "sets": {name: int((tr.sets == code).sum()) for code, name in SET_NAMES.items()},
            "flagged": int(flagged.sum()),
            "parent_hash": train.content_hash(),
        }
        purified = train.replace(images=images, labels=new_labels, meta=meta)
        return SanitizeResult(dataset=purified, decisions=decisions, detection=detection, flagged=flagged,
                              extras={"candidate_labels": cand_labels, "distances": cand["distances"]})


# Set codes re-exported for callers that read decisions.
SETS = {"benign": BENIGN, "poisoned": POISONED, "suspicious": SUSPICIOUS}
