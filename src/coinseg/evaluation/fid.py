"""Fréchet distance between feature sets, and the paper's Inception feature extractor.

The paper (torchmetrics ``FrechetInceptionDistance(feature=768, normalize=True)``) uses the FID
Inception-v3 weights, Mixed_6e output global-average-pooled to 768-d, on grey slices in [0, 1] resized to
299 x 299 (bilinear), repeated to 3 channels and converted to uint8. The network needs the optional extra
``pip install "coinseg[fid]"`` (torch-fidelity); with it, a missing weights file is downloaded once, on
first use, saying so on stderr (a file that does not load is reported, not deleted). Offline, or without the extra,
:func:`inception_extractor` raises :class:`FidUnavailable` with one line naming the file and where to put it.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import sys
import urllib.request
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
INCEPTION_SIZE = 299
DOWNLOAD_TIMEOUT_S = 30.0


class FidUnavailable(RuntimeError):
    """The Inception FID feature extractor cannot be built (weights file or package missing)."""


def _mean_cov(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need an N x D feature array with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` in float64 (unbiased covariances; the matrix
    square root by ``scipy.linalg.sqrtm``, its imaginary part from round-off discarded).

    Args:
        feats_a: ``N x D`` features (N >= 2).
        feats_b: ``M x D`` features (M >= 2).

    Returns:
        The distance (>= 0 up to round-off).
    """
    mu_a, cov_a = _mean_cov(feats_a)
    mu_b, cov_b = _mean_cov(feats_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.all(np.isfinite(covmean)):  # singular product: regularise as pytorch-fid does
        eps = 1e-6 * np.eye(cov_a.shape[0])
        covmean = scipy.linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


class _InceptionFeatures768(nn.Module):
    """``B x 1 x H x W`` in [0, 1] -> ``B x 768`` pooled Inception Mixed_6e features (torchmetrics way)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(images.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        x = x.repeat(1, 3, 1, 1)
        x = (x.clamp(0.0, 1.0) * 255).to(torch.uint8)  # torchmetrics normalize=True: (img * 255).byte()
        return self.net(x).reshape(images.shape[0], -1)


def inception_extractor(weights_path: str | Path | None = None) -> nn.Module:
    """Build the paper's 768-d Inception feature extractor (downloading its weights once if missing).

    Args:
        weights_path: the FID Inception weights; default ``torch.hub.get_dir()/checkpoints/`` +
            ``weights-inception-2015-12-05-6726825d.pth`` (where torch-fidelity / torchmetrics cache it).

    Returns:
        Module mapping ``B x 1 x H x W`` in [0, 1] to ``B x 768`` float features (eval mode, CPU).

    Raises:
        FidUnavailable: the ``torch_fidelity`` package is missing, or the weights file is missing and cannot be
            downloaded (one line naming the file, the folder to put it in and the URL).
    """
    path = (
        Path(weights_path)
        if weights_path is not None
        else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    )
    if importlib.util.find_spec("torch_fidelity") is None:
        raise FidUnavailable('FID unavailable: package torch_fidelity is not installed (pip install "coinseg[fid]")')
    if not path.is_file():
        _download_weights(path)

    from torchmetrics.image.fid import NoTrainInceptionV3

    # antialias=False: plain bilinear resize inside the network, as torchmetrics 1.1.2 used by the paper
    # (a no-op here since the input is already 299 x 299).
    try:
        net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["768"],
            feature_extractor_weights_path=str(path),
            antialias=False,
        )
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise FidUnavailable(
            f"FID unavailable: {path} does not load ({type(exc).__name__}); replace it with {INCEPTION_WEIGHTS_URL}"
        ) from None
    return _InceptionFeatures768(net).eval()


def _fetch(url: str, target: Path, timeout: float) -> None:
    """Download ``url`` to ``target`` (a new file)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out)


def _download_weights(path: Path) -> None:
    """Fetch the Inception weights to ``path`` (temporary name, then rename), or raise
    :class:`FidUnavailable` with what to do by hand."""
    by_hand = f"download {INCEPTION_WEIGHTS_URL} and place it at {path}"
    print(f"FID: downloading the Inception weights to {path}", file=sys.stderr)
    tmp = path.with_name(f"{path.name}.part-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _fetch(INCEPTION_WEIGHTS_URL, tmp, DOWNLOAD_TIMEOUT_S)
        os.replace(tmp, path)
    except OSError as exc:  # offline, refused, timed out, read-only cache
        reason = getattr(exc, "reason", None) or exc
        raise FidUnavailable(
            f"FID unavailable: Inception weights not found and not downloadable ({reason}); {by_hand}"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def _device_of(module: nn.Module, default: torch.device) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else default


def features(extractor: nn.Module, images: Tensor, batch_size: int = 64) -> np.ndarray:
    """Extract features in batches under ``torch.no_grad``.

    Args:
        extractor: module mapping ``b x 1 x H x W`` in [0, 1] to ``b x D``.
        images: ``B x 1 x H x W`` in [0, 1] (any device; batches are moved to the extractor's device).
        batch_size: images per forward pass.

    Returns:
        ``B x D`` float64 numpy array.
    """
    device = _device_of(extractor, images.device)
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device)
            out.append(extractor(batch).reshape(batch.shape[0], -1).double().cpu().numpy())
    return np.concatenate(out, axis=0)


def fid(extractor: nn.Module, images_a: Tensor, images_b: Tensor, batch_size: int = 64) -> float:
    """Fréchet distance between the ``extractor`` features of two image sets (``N x 1 x H x W`` in [0, 1])."""
    return frechet_distance(features(extractor, images_a, batch_size), features(extractor, images_b, batch_size))
