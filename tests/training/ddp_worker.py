"""One rank of a multi-process run for ``test_ddp.py``: runs the ``coinseg`` command line given as arguments
and records the slice indices this rank trained on and its final trainable weights.

Started by torchrun (``python ddp_worker.py ARGS...``: saves ``$COINSEG_TEST_RECORD/rank<r>.pt``), or imported
for the 1-process reference run (:func:`recorded`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from coinseg.cli import app
from coinseg.training import classifier, gan, loop


def weights(hooks: Any) -> dict[str, torch.Tensor]:
    """Trainable parameters of the hooks' networks (buffers such as BatchNorm statistics are per rank)."""
    if isinstance(hooks, gan.GanHooks):
        networks = {"inpainter": hooks.trainer.inpainter, "discriminator": hooks.trainer.discriminator}
    else:
        networks = {"model": hooks.model}
    return {
        f"{k}.{n}": p.detach().cpu() for k, net in networks.items() for n, p in loop.unwrapped(net).named_parameters()
    }


def recorded(argv: list[str]) -> dict[str, Any]:
    """Run the command line; returns {"indices": steps x share LongTensor, "weights": {...}, "world": n}."""
    seen: list[torch.Tensor] = []
    hooks: list[Any] = []
    shard, train_loop = loop.DataOrder.shard, loop.train_loop

    def recording_shard(self: loop.DataOrder, rows: torch.Tensor) -> torch.Tensor:
        part = shard(self, rows)
        if rows.dtype == torch.long:  # slice indices (not augmentation parameters)
            seen.append(part.clone())
        return part

    def recording_loop(fabric: Any, given: Any, *args: Any, **kwargs: Any) -> Any:
        hooks.append(given)
        return train_loop(fabric, given, *args, **kwargs)

    loop.DataOrder.shard = recording_shard  # type: ignore[method-assign]
    classifier.train_loop = gan.train_loop = recording_loop  # type: ignore[assignment]
    try:
        app(argv, standalone_mode=False)
    finally:
        loop.DataOrder.shard = shard  # type: ignore[method-assign]
        classifier.train_loop = gan.train_loop = train_loop
    return {"indices": torch.stack(seen), "weights": weights(hooks[0]), "world": int(os.environ.get("WORLD_SIZE", 1))}


if __name__ == "__main__":
    record = recorded(sys.argv[1:])
    torch.save(record, Path(os.environ["COINSEG_TEST_RECORD"]) / f"rank{os.environ['RANK']}.pt")
