"""Helpers shared by the model definitions: argument checks and weight initialisation.

Initialisation policy (applied by :func:`init_weights` to every model in this package):

* ``nn.Conv2d``: Kaiming-normal with ``mode="fan_out"`` and ReLU gain (He et al., 2015,
  "Delving Deep into Rectifiers"), the scheme used by the ResNet, WRN and VGG reference code.
  Conv biases (only present where no BatchNorm follows) are zeroed.
* ``nn.BatchNorm1d`` / ``nn.BatchNorm2d``: weight 1, bias 0, i.e. the identity transform at
  the start of training.
* ``nn.Linear``: PyTorch's default (uniform in ``±1/sqrt(fan_in)`` for weights and biases),
  kept on purpose: it is what torchvision's ResNets and the published dynamic-sparse-training
  code (SET, RigL, ITOP) use for their classifiers and MLPs, so results stay comparable.
"""

from __future__ import annotations

import numbers

from torch import nn

from itop.errors import ConfigError


def check_int(value: object, what: str, minimum: int = 1) -> int:
    """Validate that ``value`` is an integer ``>= minimum``.

    Args:
        value: The value to check.
        what: Its name, used in the error message (e.g. ``"num_classes"``).
        minimum: Smallest allowed value.

    Returns:
        ``value`` as a plain ``int``.

    Raises:
        ConfigError: If ``value`` is not an integer or is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def check_probability(value: object, what: str) -> float:
    """Validate a dropout-style probability in ``[0, 1)``.

    Args:
        value: The value to check.
        what: Its name, used in the error message.

    Returns:
        ``value`` as a ``float``.

    Raises:
        ConfigError: If ``value`` is not a real number in ``[0, 1)``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ConfigError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_bool(value: object, what: str) -> bool:
    """Validate a boolean flag (so that e.g. the string ``"false"`` is not taken as true).

    Args:
        value: The value to check.
        what: Its name, used in the error message.

    Returns:
        ``value`` unchanged.

    Raises:
        ConfigError: If ``value`` is not a ``bool``.
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, got {value!r}")
    return value


def init_weights(model: nn.Module) -> None:
    """Initialise ``model`` in place with the package-wide policy (see the module docstring).

    Args:
        model: The network whose ``Conv2d``, ``BatchNorm`` and ``Linear`` layers to initialise.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            module.reset_parameters()


def _keep_pytorch_defaults(model: nn.Module) -> None:
    """The ``pytorch`` initialisation: the layers keep the values PyTorch gave them."""


#: Initialisations a model offers through ``model_args: {init: ...}`` (LeNet-5-Caffe, VGG-C):
#: ``pytorch`` keeps PyTorch's layer defaults (the authors' code), ``kaiming`` applies
#: :func:`init_weights`.
INITS = {"pytorch": _keep_pytorch_defaults, "kaiming": init_weights}


def check_init(init: object, model: str) -> str:
    """``init`` if it names one of :data:`INITS`, else a :class:`ConfigError` naming the fix."""
    if init not in INITS:
        raise ConfigError(
            f"{model} init must be one of {', '.join(INITS)}, got {init!r}; "
            "set it with model_args: {init: pytorch}"
        )
    return init
