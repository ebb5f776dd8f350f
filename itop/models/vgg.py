"""VGG-C and VGG-D with BatchNorm, as used by SNIP and the ITOP paper on CIFAR.

Architectures from Simonyan & Zisserman, 2015, "Very Deep Convolutional Networks for
Large-Scale Image Recognition" (configurations C and D of Table 1), in the CIFAR form used
by Lee et al., 2019, "SNIP: Single-shot Network Pruning based on Connection Sensitivity" and
Liu et al., 2021, "Do We Actually Need Dense Over-parameterization? In-Time
Over-parameterization in Sparse Training": every convolution is followed by BatchNorm and
ReLU, and a three-layer classifier with BatchNorm in place of dropout follows. In VGG-C the
third convolution of each of the last three stages is 1x1; in VGG-D all convolutions are 3x3
with padding 1 (VGG-D is the usual "VGG-16").

Two forms of VGG-C are registered:

* ``vgg-c``: as the authors' code builds it (SNIP's and ITOP's ``sparselearning/models.py``,
  class ``VGG16`` with config ``'C'``). Every convolution, the 1x1 ones included, is padded by
  1, so each 1x1 convolution grows the feature map by 2 pixels and a 32x32 image ends as a
  ``512 x 2 x 2`` map: the classifier is ``Linear(2048,512)-ReLU-BN-Linear(512,512)-ReLU-BN-
  Linear(512,classes)`` (ReLU before BatchNorm), convolutions keep their biases and every layer
  keeps PyTorch's default initialisation. 11,323,466 parameters on CIFAR-10.
* ``vgg-c-nopad`` (and ``vgg-d``): the 1x1 convolutions are unpadded, a max-pool is left out
  when the feature map is already 1x1 and an ``AdaptiveAvgPool2d(1)`` precedes the classifier
  ``Linear(512,512)-BN-ReLU-Linear(512,512)-BN-ReLU-Linear(512,classes)``, so any image size
  works. Layers followed by BatchNorm have no bias, since BatchNorm's shift makes it redundant;
  convolutions are Kaiming-normal (:func:`~itop.models._common.init_weights`). This was
  itop's ``vgg-c`` before it followed the authors' code (10,531,786 parameters on CIFAR-10).
"""

from __future__ import annotations

import torch
from torch import nn

from itop.errors import ConfigError
from itop.models._common import INITS, check_init, check_int, init_weights
from itop.models.registry import register_model

#: Stage layouts: an int is a convolution's output channels with a 3x3 kernel, a tuple
#: ``(channels, kernel)`` gives the kernel explicitly, and ``"M"`` is a 2x2 max-pool.
VGG_CONFIGS: dict[str, list[int | tuple[int, int] | str]] = {
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (256, 1), "M"] + [512, 512, (512, 1), "M"] * 2,
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"] + [512, 512, 512, "M"] * 2,
}


#: Initialisations of the authors' VGG-C (``model_args: {init: ...}``): ``pytorch`` keeps
#: PyTorch's layer defaults (their code), ``kaiming`` applies :func:`init_weights`.
VGG_PAPER_INITS = tuple(INITS)


class PaperVGG(nn.Module):
    """VGG as the SNIP/ITOP code builds it: every convolution padded by 1 (1x1 ones too),
    with bias, then BatchNorm and ReLU; every max-pool kept; the flattened map feeds
    ``Linear(512*s*s,512)-ReLU-BN-Linear(512,512)-ReLU-BN-Linear(512,classes)``.

    Args:
        config: ``"C"`` or ``"D"`` (a key of :data:`VGG_CONFIGS`).
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the square input images; fixes the classifier's input
            size ``512 * s * s`` (``s = 2`` for 32x32 images with VGG-C).
        init: ``"pytorch"`` (default: PyTorch's layer defaults, as the authors' code) or
            ``"kaiming"`` (:func:`~itop.models._common.init_weights`).

    Raises:
        ConfigError: For an unknown configuration or initialisation, or an image so small
            that a max-pool would meet a 1x1 map.
    """

    def __init__(self, config: str, in_channels: int, num_classes: int, image_size: int,
                 init: str = "pytorch") -> None:
        super().__init__()
        _check_config(config)
        init = check_init(init, "vgg-c")
        channels = check_int(in_channels, "in_channels")
        num_classes = check_int(num_classes, "num_classes")
        side = check_int(image_size, "image_size")
        layers: list[nn.Module] = []
        for item in VGG_CONFIGS[config]:
            if item == "M":
                if side < 2:
                    raise ConfigError(
                        f"vgg-c as the authors build it needs larger images than {image_size}x{image_size} "
                        "(a max-pool meets a 1x1 feature map); use vgg-c-nopad, which takes any size"
                    )
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                side //= 2
                continue
            out, kernel = item if isinstance(item, tuple) else (item, 3)
            layers += [nn.Conv2d(channels, out, kernel_size=kernel, padding=1), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            side += 3 - kernel  # padding 1 keeps a 3x3 map's size and grows a 1x1's by 2
            channels = out
        self.features = nn.Sequential(*layers)
        self.feature_shape = (channels, side, side)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, 512),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(512),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(512),
            nn.Linear(512, num_classes),
        )
        INITS[init](self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, H, W)`` images to ``(N, classes)`` logits."""
        return self.classifier(self.features(x))


def _check_config(config: str) -> None:
    if config not in VGG_CONFIGS:
        raise ConfigError(f"unknown VGG configuration {config!r}; use one of {', '.join(VGG_CONFIGS)}")


class VGG(nn.Module):
    """VGG with BatchNorm and a three-layer BatchNorm classifier, for any image size.

    Args:
        config: ``"C"`` or ``"D"`` (a key of :data:`VGG_CONFIGS`).
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the square input images; decides which max-pools are
            kept (a pool is skipped when the feature map is already 1x1).
    """

    def __init__(self, config: str, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        _check_config(config)
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


@register_model(
    "vgg-c",
    description="VGG-C with BatchNorm as the SNIP/ITOP code builds it (padded 1x1 convs, 2048-input classifier)",
)
def vgg_c(*, in_channels: int, num_classes: int, image_size: int, init: str = "pytorch") -> PaperVGG:
    """Build VGG-C as the authors' code does (Simonyan & Zisserman 2015; SNIP's and ITOP's
    CIFAR variant): 11,323,466 parameters on CIFAR-10.

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the square input images.
        init: ``"pytorch"`` (the authors' code) or ``"kaiming"`` (``model_args: {init: ...}``).

    Returns:
        The initialised :class:`PaperVGG`.
    """
    return PaperVGG("C", in_channels, num_classes, image_size, init=init)


@register_model(
    "vgg-c-nopad",
    description="VGG-C with BatchNorm, unpadded 1x1 convs and global pooling (itop's former vgg-c), any size",
)
def vgg_c_nopad(*, in_channels: int, num_classes: int, image_size: int) -> VGG:
    """Build VGG-C with unpadded 1x1 convolutions and a global average pool (10,531,786
    parameters on CIFAR-10; what ``vgg-c`` was before it followed the authors' code).

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
