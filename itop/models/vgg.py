"""VGG-C and VGG-D with BatchNorm, as used by SNIP and the ITOP paper on CIFAR.

Architectures from Simonyan & Zisserman, 2015, "Very Deep Convolutional Networks for
Large-Scale Image Recognition" (configurations C and D of Table 1), in the CIFAR form used
by Lee et al., 2019, "SNIP: Single-shot Network Pruning based on Connection Sensitivity" and
Liu et al., 2021, "Do We Actually Need Dense Over-parameterization? In-Time
Over-parameterization in Sparse Training": every convolution is followed by BatchNorm and
ReLU, and the classifier is ``Linear(512,512)-BN-ReLU-Linear(512,512)-BN-ReLU-Linear(512,
classes)``. In VGG-C the third convolution of each of the last three stages is 1x1; in
VGG-D all convolutions are 3x3 with padding 1 (VGG-D is the usual "VGG-16").

To accept any image size, a max-pool is left out when the feature map is already 1x1 and
an ``AdaptiveAvgPool2d(1)`` precedes the classifier (a no-op for 32x32 CIFAR images, whose
feature map is 1x1 after the five pools). Layers followed by BatchNorm have no bias, since
BatchNorm's shift makes it redundant.
"""

from __future__ import annotations

import torch
from torch import nn

from itop.errors import ConfigError
from itop.models._common import check_int, init_weights
from itop.models.registry import register_model

#: Stage layouts: an int is a convolution's output channels with a 3x3 kernel, a tuple
#: ``(channels, kernel)`` gives the kernel explicitly, and ``"M"`` is a 2x2 max-pool.
VGG_CONFIGS: dict[str, list[int | tuple[int, int] | str]] = {
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M"] + [512, 512, (512, 1), "M"] * 2,
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"] + [512, 512, 512, "M"] * 2,
}


class VGG(nn.Module):
    """VGG with BatchNorm and a three-layer BatchNorm classifier.

    Args:
        config: ``"C"`` or ``"D"`` (a key of :data:`VGG_CONFIGS`).
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the square input images; decides which max-pools are
            kept (a pool is skipped when the feature map is already 1x1).
    """

    def __init__(self, config: str, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        if config not in VGG_CONFIGS:
            raise ConfigError(
                f"unknown VGG configuration {config!r}; use one of {', '.join(VGG_CONFIGS)}"
            )
        in_channels = check_int(in_channels, "in_channels")
        num_classes = check_int(num_classes, "num_classes")
        side = check_int(image_size, "image_size")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG_CONFIGS[config]:
            if item == "M":
                if side > 1:
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                    side //= 2
                continue
            out, kernel = item if isinstance(item, tuple) else (item, 3)
            layers += [
                nn.Conv2d(channels, out, kernel_size=kernel, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, 512, bias=False),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 512, bias=False),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, H, W)`` images to ``(N, classes)`` logits."""
        return self.classifier(self.pool(self.features(x)))


@register_model("vgg-c", description="VGG-C with BatchNorm (1x1 convs in stages 3-5), SNIP/ITOP")
def vgg_c(*, in_channels: int, num_classes: int, image_size: int) -> VGG:
    """Build VGG-C (Simonyan & Zisserman 2015; SNIP's CIFAR variant with BatchNorm).

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the square input images.

    Returns:
        The initialised :class:`VGG`.
    """
    return VGG("C", in_channels, num_classes, image_size)


@register_model("vgg-d", description="VGG-D (VGG-16) with BatchNorm, all 3x3 convs, SNIP/ITOP")
def vgg_d(*, in_channels: int, num_classes: int, image_size: int) -> VGG:
    """Build VGG-D, i.e. VGG-16 (Simonyan & Zisserman 2015; SNIP's CIFAR variant).

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the square input images.

    Returns:
        The initialised :class:`VGG`.
    """
    return VGG("D", in_channels, num_classes, image_size)
