"""The one training loop every trainer runs (the classifier, the GAN, ``benchmarks/gan_sweep.py``).

``for step in range(start, max_steps)``: one optimisation step, then each cadence tested on its own, in this
order: log (training losses, reduced over ranks), validate (and ``best.pt``), samples, checkpoint (``last.pt``,
written last so that a kill right after it loses nothing), and termination last (``max_steps`` or the
``--max-minutes`` deadline; the final step runs every cadence). Steps count completed optimisation steps, so the
row / checkpoint of step ``k`` is taken after ``k`` steps.

What a trainer supplies are small hooks (:class:`Hooks`): the step itself, its loss means, validation, the
contents of ``best.pt`` and ``last.pt``, and sample images. Networks and optimisers are built (and set up by
Fabric) by the trainer and handed to its hooks; the loop draws no data itself except through
:class:`DataOrder`, whose state is saved with the checkpoint.

Several processes (DDP): every rank runs the step on its own shard of the step's global batch; logging,
validation, samples, checkpoints and every file are the global-zero rank's, the others wait at a barrier where a
file must exist before they go on. Validation runs on rank 0 alone (on the unwrapped networks), so its metrics
are those of one process over the whole validation split: nothing to reduce. Resuming reads the checkpoint on
every rank (``--out`` must be on a filesystem all nodes share). All ranks share one data order and one random
state (seeded alike, restored alike), so a checkpoint resumes exactly on any number of processes that divides
the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from lightning.fabric import Fabric
from torch import Tensor, nn

from coinseg.errors import RunError
from coinseg.runtime.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from coinseg.runtime.console import progress_bar
from coinseg.runtime.device import close_fabric
from coinseg.runtime.rundir import Deadline, RunDir

T = TypeVar("T")


def every(step: int, n: int) -> bool:
    """True when ``step`` (completed steps) is a positive multiple of ``n``; ``n <= 0`` means never."""
    return n > 0 and step > 0 and step % n == 0


@dataclass
class Cadences:
    """Steps between events, each independent of the others (0 = only at the end)."""

    log: int
    validate: int
    checkpoint: int
    samples: int = 0


class Hooks(Protocol):
    """What a trainer gives the loop. ``validate``, ``best_state``, ``state`` and ``sample`` run on the global-zero
    rank only; ``train_step`` and ``read_losses`` on every rank."""

    def train_step(self, step: int, idx: Tensor) -> None:
        """One optimisation step on this rank's slice indices ``idx`` (LongTensor, CPU) of step ``step``
        (0-based: the number of steps completed before it)."""

    def read_losses(self) -> dict[str, float]:
        """Mean training losses since the last call, over all ranks (a collective), then reset."""

    def validate(self) -> dict[str, float | None]:
        """Validation metrics (names without the ``val_`` prefix), including the score ``best`` is chosen on."""

    def best_state(self, validation: dict[str, float | None]) -> dict[str, Any]:
        """What ``best.pt`` holds besides the run's common record and the step."""

    def state(self) -> dict[str, Any]:
        """Everything of the trainer's a resume needs (state dicts of networks and optimisers, counters)."""

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state` (``state`` is the whole ``last.pt`` dict)."""

    def sample(self, step: int) -> None:
        """Write preview images for ``step`` (may do nothing)."""


class DataOrder:
    """The slice indices of every step: a global batch of ``batch_size`` drawn from one CPU generator (seeded
    with the run's seed, identical on every rank), of which rank ``r`` of ``world`` takes rows
    ``[r * b, (r + 1) * b)``, ``b = batch_size / world``. Ranks thus see different slices, the union is the batch
    a single process would draw, and the generator's state (saved in ``last.pt``) is the same on every rank.

    ``weights``: per-slice sampling weights (drawn with replacement); None = uniform.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, weights: Tensor | None = None
    ) -> None:
        if batch_size % world:
            raise RunError(f"batch size {batch_size} does not divide over {world} processes; choose a multiple")
        self.n, self.batch_size, self.weights = n, batch_size, weights
        self.rank, self.per_rank = rank, batch_size // world
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self) -> Tensor:
        """The next global batch of indices (LongTensor[batch_size])."""
        if self.weights is None:
            return torch.randint(self.n, (self.batch_size,), generator=self.generator)
        return torch.multinomial(self.weights, self.batch_size, replacement=True, generator=self.generator)

    def shard(self, rows: Tensor) -> Tensor:
        """This rank's rows of a global batch (any tensor with the batch as dim 0)."""
        return rows[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]


def prepare_network(fabric: Fabric, module: nn.Module, channels_last: bool, compile: bool) -> nn.Module:
    """A network made ready for this Fabric, before ``fabric.setup``: BatchNorm synchronised over the processes
    under multi-GPU DDP (so that E+G and the classifier normalise over the global batch, as on one device;
    ``SyncBatchNorm`` is CUDA-only, so on CPU processes each rank normalises over its own shard), channels_last
    memory format, and ``torch.compile`` in place (``module.compile()``: state-dict keys unchanged, and calls of
    the unwrapped module compiled too). Returns the module (a new one only after the SyncBatchNorm conversion)."""
    if fabric.world_size > 1 and fabric.device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if compile:
        module.compile()
    return module


def unwrapped(module: nn.Module) -> nn.Module:
    """The plain network inside a Fabric-set-up one (no DDP, no collectives: for rank-0-only work)."""
    inner = getattr(module, "module", module)
    return inner if isinstance(inner, nn.Module) else module


def on_rank_zero_first(fabric: Fabric, make: Callable[[], Any]) -> Any:
    """Run ``make`` on the global-zero rank (e.g. claim the run folder), then let the others go on; if it fails
    there, rank 0 raises its error and the others a :class:`RunError` saying so (rather than waiting at the next
    collective for ever). The other ranks get None."""
    if fabric.world_size == 1:
        return make()
    result, error = None, None
    if fabric.is_global_zero:
        try:
            result = make()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = exc
    message = fabric.broadcast(None if error is None else str(error), src=0)
    if error is not None:
        raise error
    if message is not None:
        raise RunError(f"rank {fabric.global_rank} stopped: rank 0 failed ({message})")
    return result


def train_in(fabric: Fabric, run: RunDir | None, train: Callable[[], T]) -> T:
    """Run ``train`` in the claimed run folder ``run`` (None on ranks other than 0): the folder is released
    whatever happens; after a success the ranks' process group is closed together
    (:func:`coinseg.runtime.device.close_fabric`)."""
    try:
        result = train()
        close_fabric(fabric)
        return result
    finally:
        if run is not None:
            run.close()


def resume_from(
    fabric: Fabric, hooks: Hooks, order: DataOrder, path: Path, run: RunDir | None, best_key: str
) -> tuple[int, float | None]:
    """Load ``path`` (``last.pt``) into the hooks, the data order and the random state, on every rank; trim
    metrics.csv back to its step. Returns (step, best score so far)."""
    state = load_checkpoint(path)
    hooks.load_state(state)
    order.generator.set_state(state["generator"])
    restore_rng(state["rng"], fabric.device)
    if run is not None:
        run.trim_metrics(state["step"])
        run.log(f"resumed at step {state['step']}")
    return state["step"], state[best_key]


@dataclass
class Outcome:
    """Where a loop ended: completed steps, the last validation (empty if none ran), the best score, and whether
    the deadline (not ``max_steps``) stopped it."""

    step: int
    validation: dict[str, float | None]
    best_score: float | None
    deadline_stop: bool


def train_loop(
    fabric: Fabric,
    hooks: Hooks,
    run: RunDir | None,
    order: DataOrder,
    *,
    name: str,
    start: int,
    max_steps: int,
    cadences: Cadences,
    deadline: Deadline,
    record: dict[str, Any],
    score_key: str | None,
    best_key: str,
    best: float | None = None,
    describe: Callable[[dict[str, Any]], str] = lambda row: "",
) -> Outcome:
    """Train from step ``start`` to ``max_steps`` or the deadline.

    ``run`` is the run folder on the global-zero rank and None on the others (and None for a run without
    files, e.g. a sweep: nothing is written then). ``record``: what every checkpoint holds besides the trainer's
    state (kind, settings, window, versions...). ``score_key``: the validation metric ``best.pt`` minimises
    (None: every validation replaces ``best.pt``, which then holds the last validated state); ``best_key``: its
    name in ``last.pt``; ``best``: the best score so far (from :func:`resume_from`).
    ``describe``: the progress bar's text for a metrics row.
    """
    zero = fabric.is_global_zero
    validation: dict[str, float | None] = {}
    done, expired = start, False
    tic, tic_step = time.time(), start
    with ExitStack() as stack:
        progress, task = stack.enter_context(progress_bar(name, max_steps, start)) if zero else (None, None)
        for step in range(start, max_steps):
            hooks.train_step(step, order.shard(order.draw()))
            done = step + 1
            if progress is not None:
                progress.advance(task)  # type: ignore[arg-type]
            # the deadline is rank 0's clock, shared at log steps on several ranks (a broadcast every step would
            # cost a host-device sync)
            if fabric.world_size == 1:
                expired = deadline.expired()
            elif every(done, cadences.log) or done == max_steps:
                expired = bool(fabric.broadcast(deadline.expired(), src=0))
            final = done == max_steps or expired
            row: dict[str, Any] = {}
            if every(done, cadences.log) or final:
                rate = (done - tic_step) / max(time.time() - tic, 1e-9)
                tic, tic_step = time.time(), done
                row = {"step": done, "steps_per_s": rate, **hooks.read_losses()}
            if zero and (every(done, cadences.validate) or final):
                validation = hooks.validate()
                row = {"step": done, **row, **{f"val_{k}": v for k, v in validation.items()}}
                score = validation[score_key] if score_key else None
                if best is None or (score is not None and score < best):
                    best = score
                    if run is not None:
                        save_checkpoint({**record, **hooks.best_state(validation), "step": done}, run.best)
            if zero and (every(done, cadences.samples) or final):
                hooks.sample(done)
            if zero and row:
                if run is not None:
                    run.append_metrics(row)
                if progress is not None:
                    progress.update(task, info=describe(row))  # type: ignore[arg-type]
            if zero and run is not None and (every(done, cadences.checkpoint) or final):
                save_checkpoint(
                    {
                        **record,
                        **hooks.state(),
                        "generator": order.generator.get_state(),
                        "rng": rng_state(fabric.device),
                        "step": done,
                        best_key: best,
                    },
                    run.last,
                )
            if final:
                break
    if fabric.world_size > 1:
        fabric.barrier()
    stopped = expired and done < max_steps
    if zero and run is not None and stopped:
        run.log(f"--max-minutes reached: stopped at step {done} with a checkpoint")
    return Outcome(done, validation, best, stopped)
