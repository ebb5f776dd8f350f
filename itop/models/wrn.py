"""Wide Residual Networks, registered as the name pattern ``wrn-<depth>-<width>``.

Zagoruyko & Komodakis, 2016, "Wide Residual Networks": three groups of
``n = (depth - 4) / 6`` pre-activation basic blocks (BN-ReLU-conv3x3, twice, with optional
dropout between the convolutions) with widths ``16k, 32k, 64k`` and strides 1, 2, 2, after
a 16-channel 3x3 stem convolution; then BN-ReLU, global average pooling and a linear
classifier. When a block changes the number of channels or the resolution, its shortcut is
a 1x1 convolution applied to the pre-activated input, as in the authors' code. WRN-16-8,
WRN-22-2 and WRN-28-10 are the variants used on CIFAR by the sparse-training papers
(Dettmers & Zettlemoyer, 2019; Evci et al., 2020 (RigL)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from itop.errors import ConfigError
from itop.models._common import check_int, check_probability, init_weights
from itop.models.registry import register_model


class WideBasicBlock(nn.Module):
    """Pre-activation basic block: ``BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3``.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution (and of the shortcut).
        dropout: Dropout probability between the two convolutions (0 disables it).
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x``."""
        out = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + residual


class WideResNet(nn.Module):
    """WRN-``depth``-``width`` (Zagoruyko & Komodakis 2016).

    Args:
        depth: Total depth; ``(depth - 4)`` must be a positive multiple of 6 (16, 22, 28, 40...).
        width: Widening factor ``k`` (>= 1).
        in_channels: Input channels.
        num_classes: Number of output logits.
        dropout: Dropout probability inside each block (the paper uses 0.3 on CIFAR;
            default 0, as in the sparse-training papers).

    Raises:
        ConfigError: For an invalid depth, width or dropout.
    """

    def __init__(
        self, depth: int, width: int, in_channels: int, num_classes: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        depth = check_int(depth, "WRN depth", minimum=0)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ConfigError(
                f"WRN depth must be 6n+4 with n >= 1 (e.g. 16, 22, 28, 40), got {depth}; "
                "use a name such as wrn-28-10"
            )
        width = check_int(width, "WRN width (widening factor)")
        in_channels = check_int(in_channels, "in_channels")
        num_classes = check_int(num_classes, "num_classes")
        dropout = check_probability(dropout, "dropout")
        blocks_per_group = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)

        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        groups: list[nn.Module] = []
        planes = widths[0]
        for out_planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            blocks = []
            for i in range(blocks_per_group):
                blocks.append(WideBasicBlock(planes, out_planes, stride if i == 0 else 1, dropout))
                planes = out_planes
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, H, W)`` images to ``(N, classes)`` logits."""
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn(out))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model(
    "wrn-<depth>-<width>",
    description="Wide ResNet (Zagoruyko & Komodakis 2016), depth 6n+4, widening factor k; "
    "option dropout",
    pattern=r"wrn-(?P<depth>\d+)-(?P<width>\d+)",
    examples=("wrn-16-8", "wrn-22-2", "wrn-28-10"),
)
def wide_resnet(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    depth: int,
    width: int,
    dropout: float = 0.0,
) -> WideResNet:
    """Build WRN-``depth``-``width`` (e.g. ``wrn-28-10``: 36,479,194 parameters on CIFAR-10).

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the square input images (any size works thanks to the
            global average pooling).
        depth: Network depth, taken from the name.
        width: Widening factor, taken from the name.
        dropout: Dropout probability inside the blocks (default 0).

    Returns:
        The initialised :class:`WideResNet`.
    """
    del image_size  # the global average pool makes the network size-agnostic
    return WideResNet(depth, width, in_channels, num_classes, dropout=dropout)
