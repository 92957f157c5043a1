"""Devices: a Lightning Fabric for training (device, precision, processes), a plain ``torch.device`` for inference.

Several processes (data-parallel DDP, one process per device) are started either by Fabric itself
(``--devices N`` on one machine) or by an external launcher, ``torchrun`` or ``fabric run``, which sets the
usual ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``LOCAL_WORLD_SIZE`` variables: then the launcher's process counts
are used.
"""

from __future__ import annotations

import os

import torch
from lightning.fabric import Fabric

from coinseg.config import DeviceChoice, Precision
from coinseg.errors import RunError

STRATEGIES = ("auto", "ddp")


def resolve_device(device: DeviceChoice | str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; ``cuda`` without a CUDA device is an error (no fallback).
    Changes no global setting (unlike :func:`make_fabric`)."""
    device = DeviceChoice(device)
    if device is DeviceChoice.cuda and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if device is DeviceChoice.cuda or (device is DeviceChoice.auto and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def launched_processes() -> tuple[int, int] | None:
    """(processes on this node, processes in all) when started by ``torchrun`` / ``fabric run``, else None."""
    if not {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"} <= set(os.environ):
        return None
    return int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])


def make_fabric(
    device: DeviceChoice | str,
    precision: Precision,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
) -> Fabric:
    """A Fabric for training, launched (every rank returns from here, in its own process).

    ``devices`` per node x ``num_nodes`` processes; more than one means DDP (``strategy`` ``auto`` or ``ddp``;
    gloo on the CPU, NCCL on CUDA). Under ``torchrun`` / ``fabric run`` the launcher's process counts rule and
    ``devices``/``num_nodes`` must be left at 1 or agree with them. Mixed precision is CUDA-only (autocast on
    the CPU is slower than float32 for these networks), so asking for it on a CPU is an error. On CUDA, turns
    on cuDNN autotuning and TF32.
    """
    accelerator = resolve_device(device).type
    if accelerator == "cpu" and precision is not Precision.fp32:
        raise RunError(f"--precision {precision.value} needs a CUDA device; use 32 on the CPU")
    if strategy not in STRATEGIES:
        raise RunError(f"--strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if devices < 1 or num_nodes < 1:
        raise RunError(f"--devices {devices} --num-nodes {num_nodes}: both must be at least 1")
    launched = launched_processes()
    if launched is not None:
        local, world = launched
        if (devices, num_nodes) != (1, 1) and (devices, num_nodes * devices) != (local, world):
            raise RunError(
                f"--devices {devices} --num-nodes {num_nodes} disagree with the launcher's {local} process(es) "
                f"per node, {world} in all; leave them out when using torchrun or fabric run"
            )
        devices, num_nodes = local, world // local
    elif num_nodes > 1:
        raise RunError("--num-nodes above 1 needs a launcher on every node (torchrun or fabric run; see README)")
    if accelerator == "cuda" and devices > torch.cuda.device_count():
        raise RunError(f"--devices {devices}: only {torch.cuda.device_count()} CUDA device(s) here")
    chosen = "ddp" if devices * num_nodes > 1 or strategy == "ddp" else "auto"
    fabric = Fabric(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=chosen, precision=precision.value
    )
    if os.environ.get("LT_CLI_USED") != "1":  # `fabric run` has launched the processes already
        fabric.launch()
    if accelerator == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return fabric


def close_fabric(fabric: Fabric) -> None:
    """End a multi-process run on every rank: wait for all ranks, then shut the process group down.

    Call it on the normal path only (a rank that failed would leave the others waiting). A gloo group left for
    the interpreter's exit to tear down can abort a rank ("terminate called without an active exception").
    """
    if fabric.world_size > 1 and torch.distributed.is_initialized():
        fabric.barrier()
        torch.distributed.destroy_process_group()
