"""Residual networks: CIFAR-style ResNet-18/34 and ImageNet ResNet-50.

He et al., 2016, "Deep Residual Learning for Image Recognition". ResNet-18 and ResNet-34
use basic blocks (two 3x3 convolutions) with stages ``[2, 2, 2, 2]`` and ``[3, 4, 6, 3]``;
ResNet-50 uses bottleneck blocks (1x1, 3x3, 1x1, expansion 4) with stages ``[3, 4, 6, 3]``
and puts the stride on the 3x3 convolution (the "ResNet v1.5" placement of torchvision and
of the RigL / ITOP ImageNet experiments). Shortcuts are identities, or 1x1 convolution +
BatchNorm projections where the shape changes.

Two stems are available through the ``stem`` option: ``"cifar"`` (3x3 convolution, stride
1, no max-pool; the default of ResNet-18/34, suited to 32x32 images) and ``"imagenet"``
(7x7 convolution, stride 2, then a 3x3 stride-2 max-pool; the default of ResNet-50). A
global average pool before the classifier makes every variant accept any image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from itop.errors import ConfigError
from itop.models._common import check_bool, check_int, init_weights
from itop.models.registry import register_model

STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    """Basic residual block: ``conv3x3-BN-ReLU-conv3x3-BN`` plus shortcut, then ReLU.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution and of the projection shortcut.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """Bottleneck block: ``conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1-BN`` plus
    shortcut, then ReLU; the output has ``4 * planes`` channels.

    Args:
        in_planes: Input channels.
        planes: Channels of the inner 1x1 and 3x3 convolutions.
        stride: Stride of the 3x3 convolution and of the projection shortcut.
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a 1x1 convolution + BatchNorm projection."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ResNet(nn.Module):
    """A ResNet with four stages of widths 64, 128, 256, 512 (times the block expansion).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: Blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        in_channels: Input channels.
        num_classes: Number of output logits.
        stem: ``"cifar"`` (3x3 conv, stride 1, no max-pool) or ``"imagenet"`` (7x7 conv,
            stride 2, 3x3 stride-2 max-pool).
        zero_init_residual: Zero the last BatchNorm weight of every residual branch so that
            each block starts as the identity (Goyal et al., 2017, "Accurate, Large
            Minibatch SGD"); helps large-batch training.

    Raises:
        ConfigError: For an unknown stem or invalid sizes.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        in_channels: int,
        num_classes: int,
        stem: str = "cifar",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels")
        num_classes = check_int(num_classes, "num_classes")
        zero_init_residual = check_bool(zero_init_residual, "zero_init_residual")
        if stem not in STEMS:
            raise ConfigError(f"unknown ResNet stem {stem!r}; use one of {', '.join(STEMS)}")
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)

        in_planes = 64
        stages: list[nn.Sequential] = []
        for planes, blocks, stride in zip(
            (64, 128, 256, 512), num_blocks, (1, 2, 2, 2), strict=True
        ):
            layers = []
            for i in range(check_int(blocks, "blocks per stage")):
                layers.append(block(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

        init_weights(self)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_bn().weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, H, W)`` images to ``(N, classes)`` logits."""
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.avgpool(out), 1))


@register_model(
    "resnet-18",
    description="ResNet-18 (He et al. 2016), CIFAR stem; options stem, zero_init_residual",
)
def resnet18(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    stem: str = "cifar",
    zero_init_residual: bool = False,
) -> ResNet:
    """Build ResNet-18 (11,173,962 parameters on CIFAR-10 with the CIFAR stem).

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the input images (any size works).
        stem: ``"cifar"`` (default) or ``"imagenet"``.
        zero_init_residual: Zero the last BatchNorm weight of each block.

    Returns:
        The initialised :class:`ResNet`.
    """
    del image_size  # the global average pool makes the network size-agnostic
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes, stem, zero_init_residual)


@register_model(
    "resnet-34",
    description="ResNet-34 (He et al. 2016), CIFAR stem; options stem, zero_init_residual",
)
def resnet34(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    stem: str = "cifar",
    zero_init_residual: bool = False,
) -> ResNet:
    """Build ResNet-34 (21,282,122 parameters on CIFAR-10 with the CIFAR stem).

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the input images (any size works).
        stem: ``"cifar"`` (default) or ``"imagenet"``.
        zero_init_residual: Zero the last BatchNorm weight of each block.

    Returns:
        The initialised :class:`ResNet`.
    """
    del image_size  # the global average pool makes the network size-agnostic
    return ResNet(BasicBlock, (3, 4, 6, 3), in_channels, num_classes, stem, zero_init_residual)


@register_model(
    "resnet-50",
    description="ResNet-50 v1.5 (He et al. 2016), ImageNet stem; options stem, zero_init_residual",
)
def resnet50(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    stem: str = "imagenet",
    zero_init_residual: bool = False,
) -> ResNet:
    """Build bottleneck ResNet-50 (25,557,032 parameters on ImageNet).

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the input images (any size works).
        stem: ``"imagenet"`` (default) or ``"cifar"``.
        zero_init_residual: Zero the last BatchNorm weight (``bn3``) of each block.

    Returns:
        The initialised :class:`ResNet`.
    """
    del image_size  # the global average pool makes the network size-agnostic
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes, stem, zero_init_residual)
