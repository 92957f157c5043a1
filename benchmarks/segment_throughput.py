"""Inference throughput of ``coinseg segment`` on a prepared dataset: slices per second, end to end (store read,
normalise and resize, E+G, classifier on x and x_cf, paste-back, NIfTI writing), and of the network part alone.

    python benchmarks/segment_throughput.py RUN_DIR DATASET_DIR [--device cpu|cuda] [--batch-size 64]
                                            [--upsample guided|bilinear]

RUN_DIR: a ``coinseg train`` run; DATASET_DIR: a ``coinseg prepare`` folder (e.g. from
``benchmarks/data_scale.py --skip-train --work DIR``, then ``DIR/dataset``). Every case is segmented (``--split
all``) into a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from coinseg.inference import collect_jobs, segment
from coinseg.predictor import load_predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--upsample", default="guided", choices=["guided", "bilinear"])
    args = parser.parse_args()
    jobs = collect_jobs(args.dataset, "all")
    n = sum(job.n_slices for job in jobs)
    with tempfile.TemporaryDirectory() as scratch:
        tic = time.perf_counter()
        segment(
            args.run,
            args.dataset,
            Path(scratch) / "out",
            split="all",
            device=args.device,
            batch_size=args.batch_size,
            upsample=args.upsample,
        )
        total = time.perf_counter() - tic
    predictor = load_predictor(args.run, args.device)
    x = torch.rand(args.batch_size, 1, predictor.size, predictor.size, device=predictor.device) * 2 - 1
    predictor.maps.counterfactual(x)  # warm-up
    reps = max(1, 512 // args.batch_size)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(reps):
        x_cf = predictor.maps.counterfactual(x)
        predictor.probs(x_cf, args.batch_size)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    network = reps * args.batch_size / (time.perf_counter() - tic)
    print(f"{len(jobs)} volumes, {n} slices at {predictor.size} px on {predictor.device}, batch {args.batch_size}")
    print(f"segment end to end ({args.upsample} upsampling): {total:.1f} s, {n / total:.1f} slices/s")
    print(f"network only (E+G, f(x_cf)): {network:.1f} slices/s")


if __name__ == "__main__":
    main()
