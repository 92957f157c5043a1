"""The black-box classifier f: one logit per image (abnormal > 0), sigmoid gives the probability."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models import resnet18

from coinseg.config import ClassifierArch


class Classifier(nn.Module):
    """Wraps a backbone mapping ``B x 1 x H x W`` to ``B x 1`` logits; ``cam_layer_name`` names (within the
    backbone) the layer CAM methods hook."""

    def __init__(self, backbone: nn.Module, cam_layer_name: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.cam_layer_name = cam_layer_name

    def forward(self, x: Tensor) -> Tensor:
        """x: B x 1 x H x W in [-1, 1] -> logits: B (float, unbounded)."""
        return self.backbone(x).squeeze(1)

    @property
    def cam_layer(self) -> nn.Module:
        """The last convolutional stage (ResNet-18 ``layer4``; small CNN: its last block)."""
        return self.backbone.get_submodule(self.cam_layer_name)


class SmallCNN(nn.Module):
    """``len(widths)`` blocks Conv3x3-BN-ReLU-Conv3x3-BN-ReLU-MaxPool2, global average *and* max pool
    (concatenated: a lesion of a few pixels is not diluted by the average), dropout, Linear(-> 1):
    ``B x 1 x H x W -> B x 1`` logits. ``stem_stride``: the stride of the very first convolution (1 or 2).
    """

    def __init__(self, widths: Sequence[int], dropout: float = 0.2, stem_stride: int = 1) -> None:
        super().__init__()
        ins = [1, *widths[:-1]]
        strides = [stem_stride] + [1] * (len(widths) - 1)
        self.blocks = nn.Sequential(*(_small_block(i, o, s) for i, o, s in zip(ins, widths, strides, strict=True)))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * widths[-1], 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(x)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.fc(self.dropout(pooled))


def _small_block(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def build_classifier(arch: ClassifierArch, widths: Sequence[int], stem_stride: int = 1) -> Classifier:
    """A randomly initialised classifier (no weights are downloaded).

    ``resnet18``: torchvision ResNet-18 with a 1-channel 7x7 stem and ``fc = Linear(512, 1)`` (``widths`` and
    ``stem_stride`` unused); ``small``: :class:`SmallCNN` with ``widths`` and ``stem_stride``.
    """
    if ClassifierArch(arch) is ClassifierArch.small:
        return Classifier(SmallCNN(widths, stem_stride=stem_stride), f"blocks.{len(widths) - 1}")
    net = resnet18(weights=None, num_classes=1)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return Classifier(net, "layer4")
