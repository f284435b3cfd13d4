"""Relative robustness under shift, as in corruption benchmarks (ImageNet-C, Cityscapes-C).

For a shift family ``f`` evaluated at severities ``S`` (domains ``f-1`` … ``f-5``)::

    robustness/<f>/<metric> = (1/|S|) · Σ_{s∈S} metric(f-s) / metric(clean)

with ``clean`` the same model's score on the clean validation split. 1.0 means
no loss under shift. Domains without a ``-<severity>`` suffix (``target``) form
no family.

Corruption domains (``corrupt.<corruption>-<severity>``, ImageNet-C; see
:mod:`hardseg.data.corruptions`) add, as in Hendrycks & Dietterich 2019 and
Kamann & Rother 2020 (their "mean performance under corruption")::

    CP_c                 = (1/|S_c|) · Σ_s metric(corrupt.c-s)
    robustness/mPC/<m>   = (1/|C|) · Σ_c CP_c                  (absolute)
    robustness/rPC/<m>   = mPC / clean                          (relative)
    robustness/corruption_<family>/<m> = (1/|C_f|) · Σ_{c∈f} CP_c / clean

over the corruptions C evaluated, in the four families of :data:`CORRUPTION_FAMILIES`.
No torch and no other hardseg module but :mod:`hardseg.keys`, so training (``trainables``)
and reports use the same formulas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from hardseg.keys import CORRUPT_PREFIX, MIOU, ROBUSTNESS_PREFIX, VAL_PREFIX

# ImageNet-C's corruptions by family (Hendrycks & Dietterich 2019, with its four extra ones);
# hardseg.data.corruptions implements each name.
CORRUPTION_FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
    "weather": ("snow", "frost", "fog", "brightness", "spatter"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate"),
}
FAMILY_OF = {name: fam for fam, names in CORRUPTION_FAMILIES.items() for name in names}


def relative_robustness(clean: float, shifted_by_severity: Mapping[int, float]) -> float:
    """Mean relative performance under shift: (1/|S|)·Σ_s shifted_s / clean, over severities s.

    clean <= 0 (or non-finite), an empty mapping or a non-finite shifted score raise ValueError.
    """
    if not math.isfinite(clean) or clean <= 0:
        raise ValueError(f"clean score must be finite and > 0 to divide by, got {clean}")
    if not shifted_by_severity:
        raise ValueError("no shifted scores: need at least one severity")
    shifted = [float(v) for v in shifted_by_severity.values()]
    if not all(math.isfinite(v) for v in shifted):
        raise ValueError(f"shifted scores must be finite, got {shifted}")
    return sum(v / clean for v in shifted) / len(shifted)


def shift_family(domain: str) -> tuple[str, int] | None:
    """``"fog-3"`` → ``("fog", 3)``; None for a domain without a severity (``val``, ``target``)."""
    family, _, severity = domain.rpartition("-")
    return (family, int(severity)) if family and severity.isdigit() else None


def robustness(metrics: Mapping[str, float], metric: str = MIOU, clean: float | None = None) -> dict[str, float]:
    """``{"robustness/<family>/<metric>": score}`` per shift family found in ``metrics``.

    ``metrics`` holds ``<domain>/<metric>`` keys; ``clean`` defaults to ``metrics["val/<metric>"]``.
    Empty when the clean score is missing, non-finite or <= 0; a family with a
    non-finite shifted score is left out.
    """
    clean = metrics.get(f"{VAL_PREFIX}{metric}") if clean is None else clean
    if clean is None or not math.isfinite(clean) or clean <= 0:
        return {}
    families: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        domain, _, name = key.partition("/")
        fam = shift_family(domain)
        if name == metric and fam is not None:
            families.setdefault(fam[0], {})[fam[1]] = value
    out = {}
    for family, by_severity in sorted(families.items()):
        if all(math.isfinite(v) for v in by_severity.values()):
            out[f"{ROBUSTNESS_PREFIX}{family}/{metric}"] = relative_robustness(clean, by_severity)
    out.update(corruption_robustness(families, metric, clean))
    return out


def corruption_robustness(families: Mapping[str, Mapping[int, float]], metric: str, clean: float
                          ) -> dict[str, float]:
    """mPC, rPC and per-family relative robustness (module docstring) from ``{family: {severity: score}}``;
    empty without corruption domains or with a non-finite score among them."""
    cp: dict[str, float] = {}
    for family, by_severity in families.items():
        name = family[len(CORRUPT_PREFIX):] if family.startswith(CORRUPT_PREFIX) else None
        if name in FAMILY_OF:
            if not all(math.isfinite(v) for v in by_severity.values()):
                return {}
            cp[name] = sum(by_severity.values()) / len(by_severity)
    if not cp:
        return {}
    mpc = sum(cp.values()) / len(cp)
    out = {f"{ROBUSTNESS_PREFIX}mPC/{metric}": mpc, f"{ROBUSTNESS_PREFIX}rPC/{metric}": mpc / clean}
    by_family: dict[str, list[float]] = {}
    for name, value in cp.items():
        by_family.setdefault(FAMILY_OF[name], []).append(value / clean)
    for fam, values in sorted(by_family.items()):
        out[f"{ROBUSTNESS_PREFIX}corruption_{fam}/{metric}"] = sum(values) / len(values)
    return out
