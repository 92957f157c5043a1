"""Devices: a Lightning Fabric for training (device, precision), a plain ``torch.device`` for inference."""

from __future__ import annotations

import torch
from lightning.fabric import Fabric

from coinseg.config import DeviceChoice, Precision
from coinseg.errors import RunError


def resolve_device(device: DeviceChoice | str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; ``cuda`` without a CUDA device is an error (no fallback).
    Changes no global setting (unlike :func:`make_fabric`)."""
    device = DeviceChoice(device)
    if device is DeviceChoice.cuda and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if device is DeviceChoice.cuda or (device is DeviceChoice.auto and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def make_fabric(device: DeviceChoice | str, precision: Precision) -> Fabric:
    """One-device Fabric for training. Mixed precision is CUDA-only (autocast on CPU is slower than float32 for
    these networks), so asking for it on a CPU is an error. On CUDA, turns on cuDNN autotuning and TF32."""
    accelerator = resolve_device(device).type
    if accelerator == "cpu" and precision is not Precision.fp32:
        raise RunError(f"--precision {precision.value} needs a CUDA device; use 32 on the CPU")
    fabric = Fabric(accelerator=accelerator, devices=1, precision=precision.value)
    if accelerator == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return fabric
