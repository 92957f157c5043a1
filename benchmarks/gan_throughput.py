"""Training throughput of the counterfactual GAN: images/s, peak GPU memory and compile time, per speed variant.

Runs the real trainer step (GanTrainer.step: D every step, E+G every ``gen_every``-th step) on random inputs kept
on the device, with a randomly initialised classifier of the profile's architecture; no data or training run
needed. Variants (``--variants``, comma-separated; ``+`` combines):

- ``fp32``: float32 (TF32 matmuls/convolutions on CUDA), the default;
- ``bf16``: bf16-mixed autocast (CUDA only: skipped on the CPU, where coinseg refuses mixed precision);
- ``channels_last``: networks in channels_last memory format;
- ``compile``: ``torch.compile`` of E+G, D and the classifier; ``first_steps_s`` (the warm-up steps, compile
  included) minus the fp32 variant's is the compile time.

Every variant runs at every ``--batch-sizes`` value. One JSON line per measurement, then a Markdown table.

    python benchmarks/gan_throughput.py --profile tiny --device cpu --steps 5 --warmup 2      # CPU smoke run
    python benchmarks/gan_throughput.py --profile paper --device cuda \\
        --variants fp32,bf16,channels_last,bf16+channels_last,compile,bf16+channels_last+compile \\
        --batch-sizes 16,64 --steps 50 --warmup 5
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from coinseg.config import Precision, Settings, profile_settings, settings_from_dict
from coinseg.errors import CoinsegError
from coinseg.models.classifier import build_classifier
from coinseg.runtime.device import make_fabric
from coinseg.training.gan import GanTrainer

TINY = {
    "data": {"size": 32},
    "classifier": {"widths": [4, 8]},
    "gan": {
        "enc_widths": [4, 8, 16],
        "stem_width": 4,
        "disc_widths": [4, 8, 16],
        "disc_down": [2, 2, 2],
        "skips": [1, 2],
    },
}
OPTIONS = {"fp32", "bf16", "channels_last", "compile"}


def variant_settings(profile: str, variant: str, batch: int) -> Settings:
    """The profile's settings with ``variant``'s options (``+``-separated) and batch size."""
    options = set(variant.split("+"))
    if not options <= OPTIONS:
        raise SystemExit(f"--variants {variant!r}: options are {', '.join(sorted(OPTIONS))}")
    settings = settings_from_dict(TINY) if profile == "tiny" else profile_settings(profile)
    settings.precision = Precision.bf16 if "bf16" in options else Precision.fp32
    settings.channels_last = "channels_last" in options
    settings.compile = "compile" in options
    settings.gan.batch_size = batch
    return settings


def measure(settings: Settings, device: str, steps: int, warmup: int) -> dict[str, Any]:
    """Run ``warmup`` then ``steps`` trainer steps; images/s of the timed steps, peak CUDA memory of them."""
    fabric = make_fabric(device, settings.precision)
    torch.manual_seed(0)
    classifier = build_classifier(settings.classifier.arch, settings.classifier.widths)
    trainer = GanTrainer.from_settings(settings, classifier, fabric)
    size, batch = settings.data.size, settings.gan.batch_size
    x = (torch.rand(batch, 1, size, size, device=fabric.device) * 2 - 1).contiguous()
    cuda = fabric.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    for step in range(warmup):
        trainer.step(x, step)
    trainer.read_losses()  # one sync: all queued work is done
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    for step in range(warmup, warmup + steps):
        trainer.step(x, step)
    trainer.read_losses()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - tic
    return {
        "first_steps_s": round(first, 2),
        "iterations_per_s": round(steps / seconds, 3),
        "images_per_s": round(steps * batch / seconds, 1),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", choices=["tiny", "quick", "paper"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--variants", default="fp32,bf16,channels_last,compile")
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps (compile happens here)")
    args = parser.parse_args()

    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for variant in args.variants.split(","):
            settings = variant_settings(args.profile, variant, batch)
            row: dict[str, Any] = {"profile": args.profile, "variant": variant, "batch_size": batch}
            try:
                row.update(measure(settings, args.device, args.steps, args.warmup))
            except CoinsegError as exc:  # e.g. bf16 on the CPU
                row["skipped"] = str(exc)
            torch._dynamo.reset()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            rows.append(row)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    where = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\n{args.profile} profile on {where}, torch {torch.__version__}, G every {settings.gan.gen_every} step(s)\n")
    print("| variant | batch | images/s | peak GiB | first steps (s) |\n|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['variant']} | {r['batch_size']} | skipped: {r['skipped']} | | |")
        else:
            print(
                f"| {r['variant']} | {r['batch_size']} | {r['images_per_s']} | {r['peak_gpu_memory_gib'] or '–'} "
                f"| {r['first_steps_s']} |"
            )


if __name__ == "__main__":
    main()
