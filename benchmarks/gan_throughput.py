"""Training throughput of the counterfactual GAN: iterations/s, images/s and peak GPU memory for a profile.

Runs the real trainer step (GanTrainer.step: D every step, E+G every ``gen_every``-th step) on random inputs
with a randomly initialised classifier of the profile's architecture; no data or training run needed.

    python benchmarks/gan_throughput.py --profile quick --device cpu --steps 30
    python benchmarks/gan_throughput.py --profile paper --device cuda --precision bf16-mixed --steps 50
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from coinseg.config import Precision, profile_settings
from coinseg.models.classifier import build_classifier
from coinseg.runtime.device import make_fabric
from coinseg.training.gan import GanTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", choices=["quick", "paper"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="32", choices=[p.value for p in Precision])
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()

    settings = profile_settings(args.profile)
    settings.precision = Precision(args.precision)
    if args.batch_size:
        settings.gan.batch_size = args.batch_size
    fabric = make_fabric(args.device, settings.precision)
    torch.manual_seed(0)
    classifier = build_classifier(settings.classifier.arch, settings.classifier.widths)
    trainer = GanTrainer(settings, classifier, fabric)
    size, batch = settings.data.size, settings.gan.batch_size
    x = (torch.rand(batch, 1, size, size, device=fabric.device) * 2 - 1).contiguous()
    cuda = fabric.device.type == "cuda"
    for step in range(args.warmup):
        trainer.step(x, step)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tic = time.perf_counter()
    for step in range(args.warmup, args.warmup + args.steps):
        trainer.step(x, step)
    trainer.read_losses()  # one sync: all queued work is done
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - tic
    result = {
        "profile": args.profile,
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "precision": settings.precision.value,
        "size": size,
        "batch_size": batch,
        "gen_every": settings.gan.gen_every,
        "steps": args.steps,
        "iterations_per_s": round(args.steps / seconds, 3),
        "images_per_s": round(args.steps * batch / seconds, 1),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "torch": str(torch.__version__),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
