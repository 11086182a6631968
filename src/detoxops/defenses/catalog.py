"""Defenses by name, for the CLI, flows and benchmark tables.

Names (a suffix ``-ddim`` switches any SampDetox variant to DDIM with the configured stride, ``-ddimN`` to DDIM
with stride N, e.g. ``faithful-ddim10``; ``-ddpm`` to DDPM):

=================  ============================================================================================
``none``           no defense
``sampdetox``      SampDetox with ``params.yaml``'s ``sampdetox`` section as it is (profile ``robust`` by default)
``faithful``       the paper's Algorithm 1 (``profile: faithful``), other fields from the section
``public_code``    the public reference code's variant (``profile: public_code``)
``robust``         detoxops's global-path profile (``profile: robust``)
``repair``         the patch repair of issue #20, then robust's global path (``profile: repair``)
``stage1``         table 2's "Stage 1" ablation, with the faithful t1
``noise*``         table 2's "Noise*" ablation (faithful SampDetox without denoising)
``noising``        table 8 baseline: Gaussian noise, std 0.1
``shrinkpad``      table 8 baseline: shrink by 4 px, random zero-pad back
``blur``           table 8 baseline: Gaussian blur, kernel 5, sigma 1
``zip``            table 1 baseline ZIP (``defenses.zip``; ``params.baselines.zip``), purifier only
``sancdifi``       table 1 baseline Sancdifi (``defenses.sancdifi``): purifier + the classifier (queried, black box)
``bdmae``          table 1 baseline BDMAE (``defenses.bdmae``), the purifier's inpainting for the MAE: purifier +
                   the classifier (queried, black box)
=================  ============================================================================================

The table-1 baselines take their settings from ``baselines=`` (a :class:`~detoxops.config.BaselinesConfig`,
``params.yaml``'s ``baselines`` section; defaults without it) and Sancdifi / BDMAE the black box as
``classifier=`` (anything :class:`~detoxops.defenses.guard.Detoxifier` accepts); docs/baselines.md.
"""

from __future__ import annotations

import re

from detoxops.config import BaselinesConfig, SampDetoxConfig
from detoxops.defenses.base import NoDefense

__all__ = ["DEFENSE_NAMES", "build_defense", "needs_purifier"]

DEFENSE_NAMES = (
    "none",
    "sampdetox",
    "faithful",
    "public_code",
    "robust",
    "repair",
    "stage1",
    "noise*",
    "noising",
    "shrinkpad",
    "blur",
    "zip",
    "sancdifi",
    "bdmae",
)
_BASELINES = {"zip", "sancdifi", "bdmae"}
_NEEDS_CLASSIFIER = {"sancdifi", "bdmae"}
_NEEDS_PURIFIER = {"sampdetox", "faithful", "public_code", "robust", "repair", "stage1", "noise*"} | _BASELINES
_SAMPLER_SUFFIX = re.compile(r"(ddpm|ddim)(\d*)")


def needs_purifier(names: list[str]) -> bool:
    """Whether any of the named defenses is diffusion-based (needs a purifier)."""
    return any(n.partition("-")[0] in _NEEDS_PURIFIER for n in names)


def build_defense(name: str, purifier=None, cfg: SampDetoxConfig | None = None, *, classifier=None,
                  baselines: BaselinesConfig | None = None):
    """The defense called ``name`` (see the module docstring); ``purifier`` for the diffusion-based ones,
    ``classifier`` (the black box) for the query-based baselines, ``baselines`` their settings."""
    from detoxops.defenses.ablations import NoiseOnly, Stage1Only
    from detoxops.defenses.sampdetox import SampDetox
    from detoxops.defenses.transforms import Blur, Noising, ShrinkPad

    cfg = cfg or SampDetoxConfig()
    base, _, suffix = name.partition("-")
    sampler = _SAMPLER_SUFFIX.fullmatch(suffix) if suffix else None
    if base not in DEFENSE_NAMES or (suffix and sampler is None):
        raise ValueError(
            f"unknown defense {name!r}; known: {', '.join(DEFENSE_NAMES)} (optionally -ddim, -ddimN for stride N, "
            "or -ddpm)"
        )
    if sampler is not None and sampler.group(1) == "ddpm" and sampler.group(2):
        raise ValueError(f"defense {name!r}: a stride applies to DDIM only (-ddimN)")
    if sampler is not None and sampler.group(2) and int(sampler.group(2)) < 1:
        raise ValueError(f"defense {name!r}: the DDIM stride must be >= 1")
    if suffix and (base not in _NEEDS_PURIFIER or base in _BASELINES):
        raise ValueError(f"defense {base!r} has no sampler to choose ({name!r})"
                         + (f"; set params.baselines.{base}" if base in _BASELINES else ""))
    if base in _NEEDS_PURIFIER and purifier is None:
        raise ValueError(f"defense {name!r} needs a purifier (a diffusion model)")
    if base in _NEEDS_CLASSIFIER and classifier is None:
        raise ValueError(f"defense {name!r} queries the classifier: pass classifier= (a black box)")
    if base in _BASELINES:
        return _baseline(base, purifier, classifier, baselines or BaselinesConfig())
    seed = cfg.seed
    if base == "none":
        return NoDefense()
    if base == "noising":
        return Noising(std=0.1, seed=seed)
    if base == "shrinkpad":
        return ShrinkPad(pad=4, seed=seed)
    if base == "blur":
        return Blur(kernel=5, sigma=1.0)
    update: dict = {"sampler": sampler.group(1)} if sampler else {}
    if sampler is not None and sampler.group(2):
        update["ddim_stride"] = int(sampler.group(2))
    if base in ("faithful", "stage1", "noise*"):
        update["profile"] = "faithful"
    elif base in ("public_code", "robust", "repair"):
        update["profile"] = base
    if base != "sampdetox":
        # a named profile: drop explicit overrides of profile-controlled fields so the preset applies
        update.update({k: None for k in SampDetoxConfig.PROFILE_PRESETS["faithful"]})
    variant_cfg = cfg.model_copy(update=update)
    if base == "stage1":
        return Stage1Only(purifier, variant_cfg)
    if base == "noise*":
        return NoiseOnly(purifier, variant_cfg)
    defense = SampDetox(purifier, variant_cfg, classifier=classifier)  # the classifier only for patch.confirm
    defense.name = name
    return defense


def _baseline(name: str, purifier, classifier, cfg: BaselinesConfig):
    if name == "zip":
        from detoxops.defenses.zip import Zip

        return Zip(purifier, cfg.zip, batch_size=cfg.batch_size, seed=cfg.seed)
    if name == "sancdifi":
        from detoxops.defenses.sancdifi import Sancdifi

        return Sancdifi(purifier, classifier, cfg.sancdifi, batch_size=cfg.batch_size, seed=cfg.seed)
    from detoxops.defenses.bdmae import Bdmae

    return Bdmae(purifier, classifier, cfg.bdmae, batch_size=cfg.batch_size, seed=cfg.seed)
