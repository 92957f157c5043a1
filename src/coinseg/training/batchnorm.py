"""Exact BatchNorm statistics of a network on the inputs it will be used on ("precise BN").

During training each BatchNorm layer keeps running averages of batch statistics, of *augmented* inputs (the
classifier's affine warps resample, and so smooth, every slice) and of the weights of the last few steps. The
networks are then used in eval mode on slices as they are: on the generalization suite, with those averages, the
small-lesion member's last classifier called 99 % of the normal test slices abnormal, and the validation loss
jumped between validations, which moves the checkpoint ``classifier.select: val_loss`` picks
(benchmarks/RESULTS.md, *The classifier's BatchNorm statistics*). :func:`precise_batchnorm` replaces them by
the exact mean and variance over given inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def precise_batchnorm(net: nn.Module, images: Tensor, count: int, batch_size: int, device: torch.device) -> None:
    """Set every BatchNorm layer's running mean and variance in ``net`` to the exact statistics of its input over
    ``count`` evenly spaced rows of ``images`` (N x C x H x W, e.g. slices in [-1, 1] as they are, no
    augmentation; a tensor or a lazy store view), fed in batches of ``batch_size`` on ``device``.

    Each layer normalises each batch with that batch's own mean and (biased) variance, as in training, and the
    running statistics become the population mean and (unbiased) variance over all the rows; layers without
    running statistics are left alone. The pass runs in eval mode, so no collective is called (safe on one rank of
    a ``SyncBatchNorm`` network), and through ``net.forward`` (eager even where ``net`` was compiled). The
    train/eval mode of ``net`` is restored. Does nothing when ``count`` is 0 or ``images`` is empty.
    """
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    count = min(count, len(images))
    if not layers or count <= 0:
        return
    # per layer: elements per channel, and the sums over batches of mean x count and (variance + mean^2) x count
    counts: dict[nn.Module, int] = dict.fromkeys(layers, 0)
    firsts: dict[nn.Module, Tensor] = {}
    seconds: dict[nn.Module, Tensor] = {}

    def use_batch_statistics(layer: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0].float()
        dims = [0, *range(2, x.dim())]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        layer.running_mean.copy_(mean)  # type: ignore[operator]
        layer.running_var.copy_(var)  # type: ignore[operator]
        n = x.numel() // x.shape[1]
        counts[layer] += n
        firsts[layer] = firsts.get(layer, 0.0) + mean * n
        seconds[layer] = seconds.get(layer, 0.0) + (var + mean**2) * n

    handles = [m.register_forward_pre_hook(use_batch_statistics) for m in layers]
    was_training = net.training
    net.eval()
    try:
        rows = torch.linspace(0, len(images) - 1, count).round().long()
        for i in range(0, count, batch_size):
            net.forward(images[rows[i : i + batch_size]].to(device))
    finally:
        for handle in handles:
            handle.remove()
        net.train(was_training)
    for layer in firsts:
        n = counts[layer]
        mean = firsts[layer] / n
        var = (seconds[layer] / n - mean**2).clamp(min=0) * n / max(n - 1, 1)
        layer.running_mean.copy_(mean)  # type: ignore[operator]
        layer.running_var.copy_(var)  # type: ignore[operator]
