"""LeNet models from the pruning literature: LeNet-300-100 and Caffe's LeNet-5.

Both follow LeCun et al., 1998, "Gradient-based learning applied to document recognition",
in the forms popularised for pruning by Han et al., 2015, "Learning both Weights and
Connections for Efficient Neural Networks", and used by SNIP (Lee et al., 2019) and the
dynamic-sparse-training papers: LeNet-300-100 (an MLP with 300 and 100 hidden units) and
LeNet-5-Caffe (the variant shipped with Caffe's MNIST example: 20 and 50 5x5 filters and a
500-unit hidden layer, no padding).

Both keep PyTorch's default initialisation of every layer, as the published DST code (SNFS's
and ITOP's ``sparselearning`` package) builds them; this matters for fidelity: with
Kaiming-normal (fan-out) convolutions, RigL on LeNet-5 at 98% ended 0.5 to 1 point lower
(``docs/design.md``, "Differences from the authors' code"). ``model_args: {init: kaiming}``
gives that initialisation back.
"""

from __future__ import annotations

import torch
from torch import nn

from itop.errors import ConfigError
from itop.models._common import INITS, check_init, check_int
from itop.models.mlp import MLP
from itop.models.registry import register_model

#: LeNet-5-Caffe's initialisations (``model_args: {init: ...}``): ``pytorch`` keeps PyTorch's
#: layer defaults (the authors' code), ``kaiming`` applies :func:`init_weights` (Kaiming-normal
#: fan-out convolutions, zero conv biases; what itop used before).
LENET5_INITS = tuple(INITS)

#: Smallest square input LeNet-5-Caffe accepts: two (5x5 conv, 2x2 max-pool) stages must
#: leave at least a 1x1 feature map (16 -> 12 -> 6 -> 2 -> 1).
LENET5_MIN_IMAGE_SIZE = 16


def lenet5_feature_size(image_size: int) -> int:
    """Side length of LeNet-5-Caffe's last feature map for a square input.

    Each stage is a 5x5 valid convolution (``-4``) followed by a 2x2 max-pool (``// 2``),
    so 28 -> 24 -> 12 -> 8 -> 4.

    Args:
        image_size: Side length of the input images.

    Returns:
        The side length ``s`` of the ``50 x s x s`` feature map fed to the classifier
        (``<= 0`` when the image is too small).
    """
    return ((image_size - 4) // 2 - 4) // 2


class LeNet5Caffe(nn.Module):
    """Caffe's LeNet-5: ``Conv(C,20,5)-ReLU-MaxPool2-Conv(20,50,5)-ReLU-MaxPool2-
    Linear(50*s*s,500)-ReLU-Linear(500,classes)``.

    Convolutions keep their biases because no BatchNorm follows them.

    Args:
        in_channels: Input channels (1 for MNIST).
        num_classes: Number of output logits.
        image_size: Side length of the square input images; at least 16.
        init: ``"pytorch"`` (default: PyTorch's layer defaults, as the authors' code) or
            ``"kaiming"`` (:func:`~itop.models._common.init_weights`).

    Raises:
        ConfigError: If ``image_size`` is below 16 or ``init`` is unknown.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 init: str = "pytorch") -> None:
        super().__init__()
        init = check_init(init, "lenet-5-caffe")
        in_channels = check_int(in_channels, "in_channels")
        num_classes = check_int(num_classes, "num_classes")
        image_size = check_int(image_size, "image_size")
        if image_size < LENET5_MIN_IMAGE_SIZE:
            raise ConfigError(
                f"lenet-5-caffe needs images of at least {LENET5_MIN_IMAGE_SIZE}x"
                f"{LENET5_MIN_IMAGE_SIZE} pixels (got {image_size}x{image_size}); "
                "use lenet-300-100 or mlp-cifar for smaller images"
            )
        side = lenet5_feature_size(image_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(50 * side * side, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, num_classes),
        )
        INITS[init](self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, H, W)`` images to ``(N, classes)`` logits."""
        return self.classifier(self.features(x))


@register_model(
    "lenet-300-100", description="LeNet-300-100 MLP (LeCun et al. 1998), the MNIST pruning baseline"
)
def lenet_300_100(*, in_channels: int, num_classes: int, image_size: int) -> MLP:
    """Build LeNet-300-100: ``Linear(C*H*W,300)-ReLU-Linear(300,100)-ReLU-Linear(100,classes)``.

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the square input images.

    Returns:
        The initialised :class:`~itop.models.mlp.MLP` (266,610 parameters on MNIST).
    """
    return MLP(in_channels * image_size * image_size, (300, 100), num_classes)


@register_model(
    "lenet-5-caffe",
    description="Caffe's LeNet-5 (2 conv + 2 fc layers, LeCun et al. 1998); images >= 16x16",
)
def lenet_5_caffe(*, in_channels: int, num_classes: int, image_size: int,
                  init: str = "pytorch") -> LeNet5Caffe:
    """Build Caffe's LeNet-5 (431,080 parameters on MNIST).

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the square input images; at least 16.
        init: ``"pytorch"`` (the authors' code) or ``"kaiming"`` (``model_args: {init: ...}``).

    Returns:
        The initialised :class:`LeNet5Caffe`.
    """
    return LeNet5Caffe(in_channels, num_classes, image_size, init=init)
