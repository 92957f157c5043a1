"""The one list of segmentation methods: what the CLI offers, what ``evaluate`` scores and what the demo runs.

Adding a method is one entry here plus its implementation (an attribution class in ``attribution/``, or a GAN
setting in ``config.apply_method`` for a counterfactual method).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from coinseg.errors import UsageError


@dataclass(frozen=True)
class MethodSpec:
    """``kind``: ``counterfactual`` (a trained run's map |x - x_cf| / 2, masked by ``--threshold`` and ``--extent``) or
    ``attribution`` (a saliency map of the classifier in [0, 1], thresholded at ``--saliency-threshold``).
    ``options``: the evaluate options the method reads (``n_masks`` = ``--rise-masks``). ``demo``: run by
    ``coinseg demo``."""

    name: str
    kind: Literal["counterfactual", "attribution"]
    description: str
    options: tuple[str, ...] = ()
    demo: bool = False


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("coin", "counterfactual", "COIN (Shvetsov et al. 2024)", demo=True),
        MethodSpec("singla", "counterfactual", "Singla et al.* baseline (needs --singla-run)", demo=True),
        MethodSpec("rise", "attribution", "RISE (Petsiuk et al. 2018)", options=("n_masks",), demo=True),
        MethodSpec("scorecam", "attribution", "Score-CAM", demo=True),
        MethodSpec("layercam", "attribution", "LayerCAM", demo=True),
        MethodSpec("gradcam", "attribution", "Grad-CAM"),
        MethodSpec("gradcampp", "attribution", "Grad-CAM++"),
    )
}

COUNTERFACTUAL = tuple(name for name, spec in METHODS.items() if spec.kind == "counterfactual")
ATTRIBUTION = tuple(name for name, spec in METHODS.items() if spec.kind == "attribution")
DEMO = [name for name, spec in METHODS.items() if spec.demo]


def parse_methods(text: str) -> list[str]:
    """``--methods``: comma-separated names (case-insensitive, duplicates dropped, order kept)."""
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(
            f"--methods: unknown method {unknown[0] if unknown else text!r}; choose from {','.join(METHODS)}"
        )
    return list(dict.fromkeys(methods))


def methods_help() -> str:
    return "comma-separated: " + ",".join(METHODS)
