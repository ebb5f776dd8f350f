"""Fully connected networks: the generic :class:`MLP` and its registry entries.

* ``mlp``: any depth and widths, set by the ``hidden`` option (default 4096-4096, i.e.
  784-4096-4096-10 on Fashion-MNIST): the wide, over-parameterized networks that sparse
  execution (:mod:`itop.sparse`) trains at their sparse cost;
* ``mlp-<width>x<depth>``: ``depth`` hidden layers of ``width`` units, e.g. ``mlp-4096x2``;
* ``mlp-cifar``, described next.

``mlp-cifar`` is the 3072-1024-512-10 multilayer perceptron on CIFAR-10 used by the
dynamic-sparse-training literature (Mocanu et al., 2018, "Scalable training of artificial
neural networks with adaptive sparse connectivity inspired by network science" (SET);
Liu et al., 2021, "Do We Actually Need Dense Over-parameterization? In-Time
Over-parameterization in Sparse Training" (ITOP)). All layers are plain ``nn.Linear`` so the
sparsity engine can mask every weight matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from itop.errors import ConfigError
from itop.models._common import check_int, init_weights
from itop.models.registry import register_model


class MLP(nn.Module):
    """A ReLU multilayer perceptron over flattened images.

    The input ``(N, C, H, W)`` is flattened to ``(N, C*H*W)`` and passed through
    ``Linear-ReLU`` hidden layers and a final ``Linear`` producing the logits.

    Args:
        in_features: Size of a flattened input, ``C * H * W``.
        hidden: Widths of the hidden layers, e.g. ``(300, 100)``.
        num_classes: Number of output logits.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        in_features = check_int(in_features, "in_features")
        num_classes = check_int(num_classes, "num_classes")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for i, h in enumerate(hidden):
            h = check_int(h, f"hidden[{i}]")
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, H, W)`` (or already flat ``(N, C*H*W)``) inputs to ``(N, classes)``."""
        return self.layers(x)


@register_model("mlp-cifar", description="MLP 3072-1024-512-10 on CIFAR (SET / ITOP papers)")
def mlp_cifar(*, in_channels: int, num_classes: int, image_size: int) -> MLP:
    """Build the ``C*H*W``-1024-512-``classes`` MLP (3072-1024-512-10 on CIFAR-10).

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the square input images.

    Returns:
        The initialised :class:`MLP`.
    """
    return MLP(in_channels * image_size * image_size, (1024, 512), num_classes)


def _hidden_widths(hidden: object) -> tuple[int, ...]:
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ConfigError(
            f"hidden must be a list of hidden-layer widths, e.g. [4096, 4096], got {hidden!r}"
        )
    return tuple(check_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))


@register_model(
    "mlp",
    description="ReLU MLP C*H*W-hidden...-classes; option hidden (widths, default [4096, 4096])",
)
def mlp(*, in_channels: int, num_classes: int, image_size: int,
        hidden: Sequence[int] = (4096, 4096)) -> MLP:
    """Build an MLP with the given hidden widths (784-4096-4096-10 on Fashion-MNIST by default).

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the square input images.
        hidden: Widths of the hidden layers, first to last (an empty list gives a linear
            classifier).

    Returns:
        The initialised :class:`MLP`.
    """
    return MLP(in_channels * image_size * image_size, _hidden_widths(hidden), num_classes)


@register_model(
    "mlp-<width>x<depth>",
    pattern=r"mlp-(?P<width>\d+)x(?P<depth>\d+)",
    examples=("mlp-1024x2", "mlp-2048x2", "mlp-4096x2"),
    description="ReLU MLP with <depth> hidden layers of <width> units, e.g. mlp-4096x2",
)
def mlp_uniform(*, in_channels: int, num_classes: int, image_size: int, width: int, depth: int) -> MLP:
    """Build an MLP with ``depth`` hidden layers of ``width`` units each.

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the square input images.
        width: Units per hidden layer.
        depth: Number of hidden layers.

    Returns:
        The initialised :class:`MLP`.
    """
    width = check_int(width, "width")
    depth = check_int(depth, "depth")
    return MLP(in_channels * image_size * image_size, (width,) * depth, num_classes)
