"""One rank of a multi-process run for ``test_ddp.py`` (started by torchrun): runs the ``coinseg`` command line
given as arguments and saves, per rank, the slice indices it trained on and its final trainable weights to
``$COINSEG_TEST_RECORD/rank<r>.pt``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from coinseg.cli import app
from coinseg.training import classifier, gan, loop

seen: list[torch.Tensor] = []
hooks: list[Any] = []
shard = loop.DataOrder.shard


def recording_shard(self: loop.DataOrder, rows: torch.Tensor) -> torch.Tensor:
    part = shard(self, rows)
    if rows.dtype == torch.long:  # slice indices (not augmentation parameters)
        seen.append(part.clone())
    return part


def recording_loop(fabric: Any, given: Any, *args: Any, **kwargs: Any) -> Any:
    hooks.append(given)
    return loop.train_loop(fabric, given, *args, **kwargs)


def weights(given: Any) -> dict[str, torch.Tensor]:
    """Trainable parameters of the hooks' networks (buffers such as BatchNorm statistics are per rank)."""
    if isinstance(given, gan.GanHooks):
        networks = {"inpainter": given.trainer.inpainter, "discriminator": given.trainer.discriminator}
    else:
        networks = {"model": given.model}
    return {f"{k}.{n}": p.detach().cpu() for k, net in networks.items() for n, p in net.named_parameters()}


loop.DataOrder.shard = recording_shard  # type: ignore[method-assign]
classifier.train_loop = recording_loop  # type: ignore[assignment]
gan.train_loop = recording_loop  # type: ignore[assignment]
app(sys.argv[1:], standalone_mode=False)
record = {"indices": torch.stack(seen), "weights": weights(hooks[0]), "world": int(os.environ["WORLD_SIZE"])}
torch.save(record, Path(os.environ["COINSEG_TEST_RECORD"]) / f"rank{os.environ['RANK']}.pt")
