"""Model registry and the architectures used in dynamic-sparse-training experiments.

Build a network by name; the dataset supplies the input shape and class count::

    from itop.models import build_model, list_models
    model = build_model("resnet-18", in_channels=3, num_classes=10, image_size=32)

Registered names: ``lenet-300-100``, ``lenet-5-caffe``, ``mlp-cifar``, ``vgg-c`` (as the SNIP/ITOP
code builds it: padded 1x1 convolutions, a 2048-input classifier on CIFAR), ``vgg-c-nopad``
(unpadded 1x1 convolutions and global pooling, any image size), ``vgg-d``,
``wrn-<depth>-<width>`` (e.g. ``wrn-28-10``), ``resnet-18``, ``resnet-34``, ``resnet-50``,
``vit-tiny`` (a vision transformer for 28x28 images) and ``gpt-mini`` (a causal language model
for text datasets). Image models map ``(N, C, H, W)`` float images to ``(N, num_classes)``
logits; ``gpt-mini`` maps ``(N, T)`` token ids to ``(N, T, vocab_size)`` logits (a factory
receives only the shape arguments it names). Their prunable layers are ``nn.Linear`` /
``nn.Conv2d`` modules and ``nn.MultiheadAttention`` projections, which is how the sparsity
engine finds the weights to mask. New architectures are added with :func:`register_model`.
"""

from itop.models import gpt, lenet, mlp, resnet, vgg, vit, wrn  # noqa: F401  (registers the models)
from itop.models.registry import (
    ModelSpec,
    build_model,
    get_model_spec,
    list_models,
    model_specs,
    register_model,
)

__all__ = [
    "ModelSpec",
    "build_model",
    "get_model_spec",
    "list_models",
    "model_specs",
    "register_model",
]
