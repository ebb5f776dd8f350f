"""The configurable MLP of the model zoo (``mlp``, ``mlp-<width>x<depth>``)."""

import pytest
from torch import nn

from itop.errors import ConfigError
from itop.models import build_model, get_model_spec, list_models


def _widths(model):
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def test_default_is_784_4096_4096_10_on_fashion_mnist():
    model = build_model("mlp", in_channels=1, num_classes=10, image_size=28)
    assert _widths(model) == [(784, 4096), (4096, 4096), (4096, 10)]


def test_hidden_option_sets_depth_and_widths():
    model = build_model("mlp", in_channels=3, num_classes=7, image_size=4, hidden=[32, 16, 8])
    assert _widths(model) == [(48, 32), (32, 16), (16, 8), (8, 7)]
    linear = build_model("mlp", in_channels=1, num_classes=3, image_size=2, hidden=[])
    assert _widths(linear) == [(4, 3)]


def test_width_by_depth_names():
    assert {"mlp", "mlp-<width>x<depth>", "mlp-4096x2"} <= set(list_models())
    model = build_model("mlp-96x3", in_channels=1, num_classes=10, image_size=8)
    assert _widths(model) == [(64, 96), (96, 96), (96, 96), (96, 10)]
    assert get_model_spec("mlp-2048x2").name == "mlp-<width>x<depth>"
    assert get_model_spec("mlp-cifar").name == "mlp-cifar"


@pytest.mark.parametrize("hidden, match", [(4096, "list of hidden-layer widths"), ("64", "list"),
                                           ([64, 0], r"hidden\[1\] must be >= 1"), ([1.5], "integer")])
def test_bad_hidden_values(hidden, match):
    with pytest.raises(ConfigError, match=match):
        build_model("mlp", in_channels=1, num_classes=10, image_size=8, hidden=hidden)


def test_unknown_option_and_zero_depth():
    with pytest.raises(ConfigError, match="accepted options: hidden"):
        build_model("mlp", in_channels=1, num_classes=10, image_size=8, width=3)
    with pytest.raises(ConfigError, match="depth must be >= 1"):
        build_model("mlp-64x0", in_channels=1, num_classes=10, image_size=8)
