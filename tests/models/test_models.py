"""Shapes, parameter counts and invariants of the networks (CPU, small inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from coinseg.config import ClassifierArch, Fusion, GanConfig, Settings, Upsample, paper_settings
from coinseg.models import (
    Classifier,
    Discriminator,
    Encoder,
    Generator,
    build_classifier,
    build_discriminator,
    build_encoder_generator,
    fuse,
)
from coinseg.models.blocks import ConditionalBatchNorm, DiscriminatorBlock, EncoderBlock, GeneratorBlock

SIZE = 64
ENC = [16, 32, 64, 128]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def image(batch: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.rand(batch, 1, size, size) * 2 - 1


def test_conditional_batch_norm() -> None:
    cbn = ConditionalBatchNorm(8, n_classes=2)
    gamma, beta = cbn.embed.weight[:, :8], cbn.embed.weight[:, 8:]
    assert (gamma - 1).abs().max() < 0.1 and torch.all(beta == 0)
    x = torch.randn(4, 8, 5, 5)
    assert cbn(x, torch.tensor([0, 1, 0, 1])).shape == x.shape
    with torch.no_grad():
        cbn.embed.weight[1] = 0
    out = cbn(x, torch.tensor([0, 1, 0, 1]))
    assert torch.all(out[1] == 0) and out[0].abs().sum() > 0


def test_encoder_block_shape() -> None:
    assert EncoderBlock(16, 32)(torch.randn(2, 16, 16, 16)).shape == (2, 32, 8, 8)


@pytest.mark.parametrize("mode", list(Upsample))
def test_generator_block_shape(mode: Upsample) -> None:
    block = GeneratorBlock(48, 16, n_classes=2, mode=mode)
    assert block(torch.randn(2, 48, 8, 8), torch.tensor([0, 1])).shape == (2, 16, 16, 16)


def test_discriminator_block_shapes() -> None:
    assert DiscriminatorBlock(1, 16, 2, first=True)(image()).shape == (2, 16, 32, 32)
    assert DiscriminatorBlock(16, 32, 2)(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)
    same = DiscriminatorBlock(32, 32, 1)
    assert isinstance(same.shortcut[0], nn.Identity)
    assert same(torch.randn(2, 32, 4, 4)).shape == (2, 32, 4, 4)


def test_encoder_features() -> None:
    feats = Encoder(16, ENC)(image())
    assert [tuple(f.shape) for f in feats] == [
        (2, w, SIZE // 2 ** (i + 1), SIZE // 2 ** (i + 1)) for i, w in enumerate(ENC)
    ]


@pytest.mark.parametrize("skips", [[], [1], [1, 2, 3]])
@pytest.mark.parametrize("mode", list(Upsample))
def test_generator_output_size(skips: list[int], mode: Upsample) -> None:
    feats = Encoder(16, ENC)(image())
    g = Generator(ENC, skips, upsample=mode)(feats, torch.tensor([0, 1]))
    assert g.shape == (2, 1, SIZE, SIZE)


def test_generator_skip_channels() -> None:
    gen = Generator(ENC, [1, 2, 3])
    ins = [block.state_dict()["norm1.embed.weight"].shape[1] // 2 for block in gen.blocks]
    assert ins == [128, 128 + 64, 64 + 32, 32 + 16]


def test_generator_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="skips"):
        Generator(ENC, [0])
    with pytest.raises(ValueError, match="skips"):
        Generator(ENC, [4])
    feats = Encoder(16, ENC)(image())
    with pytest.raises(ValueError, match="features"):
        Generator(ENC, [1])(feats[1:], torch.tensor([0, 0]))


def test_identity_fusion_starts_at_the_identity() -> None:
    """With clamp_add the untrained inpainter returns x exactly; the paper's tanh fusions start from Xavier."""
    from coinseg.config import GanConfig
    from coinseg.method import build_inpainter

    cfg = GanConfig(enc_widths=list(ENC), skips=[1, 2])
    x = image().clamp(-1, 1)
    inpainter = build_inpainter(cfg)
    assert torch.equal(inpainter(x, torch.zeros(2, dtype=torch.long)), x)
    other = build_inpainter(GanConfig(enc_widths=list(ENC), skips=[1, 2], fusion=Fusion.tanh))
    assert other.generator.head[-1].weight.abs().sum() > 0


def test_fuse() -> None:
    x = torch.tensor([-1.0, -0.3, 0.0, 0.7, 1.0]).view(1, 1, 1, 5)
    zero = torch.zeros_like(x)
    assert torch.equal(fuse(x, zero, Fusion.clamp_add), x)
    assert torch.equal(fuse(x, torch.full_like(x, 5.0), Fusion.clamp_add), torch.ones_like(x))
    assert torch.allclose(fuse(x, zero, Fusion.tanh_add), torch.tanh(x))
    assert not torch.allclose(fuse(x, zero, Fusion.tanh_add), x)
    assert torch.equal(fuse(x, zero, Fusion.tanh), zero)


def test_discriminator() -> None:
    disc = Discriminator(ENC, [2, 2, 2, 2])
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert convs and all(parametrize.is_parametrized(m, "weight") for m in convs)
    assert not parametrize.is_parametrized(disc.embed)
    disc.eval()
    x = image(3)
    out0 = disc(x, torch.zeros(3, dtype=torch.long))
    out1 = disc(x, torch.ones(3, dtype=torch.long))
    assert out0.shape == (3,)
    h = torch.relu(disc.blocks(x)).sum(dim=(2, 3))
    projection = ((disc.embed.weight[1] - disc.embed.weight[0]) * h).sum(1)
    assert torch.allclose(out1 - out0, projection, rtol=1e-4, atol=1e-3)
    assert (out1 - out0).abs().min() > 0


def test_discriminator_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="same length"):
        Discriminator([16, 32], [2])


def test_build_gan_quick_trains_end_to_end() -> None:
    cfg = GanConfig()
    enc, gen = build_encoder_generator(cfg)
    disc = build_discriminator(cfg)
    assert sum(parametrize.is_parametrized(m) for m in enc.modules()) == len(cfg.enc_widths)
    x, y = image(), torch.tensor([0, 1])
    x_cf = fuse(x, gen(enc(x), y), cfg.fusion)
    disc(x_cf, y).sum().backward()
    for module in (enc, gen, disc):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


def test_build_gan_without_sn_shortcut() -> None:
    enc, gen = build_encoder_generator(GanConfig(sn_shortcut=False))
    assert not any(parametrize.is_parametrized(m) for m in [*enc.modules(), *gen.modules()])


def test_paper_parameter_counts() -> None:
    gan = paper_settings().gan
    enc, gen = build_encoder_generator(gan)
    disc = build_discriminator(gan)
    assert n_params(enc) == 19_581_504
    assert n_params(gen) == 33_525_441
    assert n_params(disc) == 38_419_905
    assert n_params(Generator(gan.enc_widths, [], sn_shortcut=False)) == 30_040_001


@pytest.mark.parametrize("arch", list(ClassifierArch))
def test_classifier(arch: ClassifierArch) -> None:
    clf = build_classifier(arch, [8, 16, 32, 64])
    assert isinstance(clf, Classifier)
    logits = clf(image(3))
    assert logits.shape == (3,) and logits.dtype == torch.float32
    assert isinstance(clf.cam_layer, nn.Module)
    expected = clf.backbone.get_submodule("layer4" if arch is ClassifierArch.resnet18 else "blocks.3")
    assert clf.cam_layer is expected
    assert not any(k.startswith("cam") for k in clf.state_dict())


def test_resnet18_parameter_count() -> None:
    clf = build_classifier(ClassifierArch.resnet18, [])
    assert n_params(clf) == 11_170_753
    assert clf.state_dict()["backbone.conv1.weight"].shape == (64, 1, 7, 7)


def test_a_strided_stem_takes_twice_the_input_for_the_same_features() -> None:
    """SmallCNN with stem_stride 2 on 128 px ends in the feature map that stride 1 gives on 64 px (4 x 4 after four
    pools), and still gives one logit per image."""
    plain, strided = (
        build_classifier(ClassifierArch.small, [4, 8, 8, 8]),
        build_classifier(ClassifierArch.small, [4, 8, 8, 8], stem_stride=2),
    )
    assert strided.backbone.blocks[0][0].stride == (2, 2) and plain.backbone.blocks[0][0].stride == (1, 1)
    assert strided.backbone.blocks(torch.zeros(2, 1, 128, 128)).shape == (2, 8, 4, 4)
    assert plain.backbone.blocks(torch.zeros(2, 1, 64, 64)).shape == (2, 8, 4, 4)
    assert strided(torch.zeros(3, 1, 128, 128)).shape == (3,)


def test_a_strided_stem_classifier_is_rebuilt_from_its_checkpoint(
    tiny_data: Path, tiny: Settings, tmp_path: Path
) -> None:
    """The checkpoint records the stem's stride; load_classifier builds the same network and loads its weights."""
    from coinseg.method import load_classifier
    from coinseg.training.classifier import train_classifier

    tiny.classifier.stem_stride = 2
    train_classifier(tiny_data, tmp_path / "clf", tiny, device="cpu")
    model, ckpt = load_classifier(tmp_path / "clf")
    assert ckpt["stem_stride"] == 2 and model.backbone.blocks[0][0].stride == (2, 2)
    assert model(torch.zeros(2, 1, tiny.data.size, tiny.data.size)).shape == (2,)
