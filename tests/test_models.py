"""Tests for the model registry (itop.models) and the registered architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from itop.errors import ConfigError
from itop.models import (
    ModelSpec,
    build_model,
    get_model_spec,
    list_models,
    model_specs,
    register_model,
)
from itop.models import registry as registry_module

# Natural input shape (channels, side) and class count of every model's forward test.
# WRNs are exercised through the small wrn-16-2 for speed; ResNet-50 at 64x64 with 10 classes.
FORWARD_CASES = {
    "lenet-300-100": [(1, 28, 10), (1, 8, 10)],
    "lenet-5-caffe": [(1, 28, 10)],
    "mlp-cifar": [(3, 32, 10)],
    "mlp": [(1, 8, 10)],
    "mlp-64x2": [(1, 8, 10)],
    "vgg-c": [(3, 32, 10), (1, 28, 10)],
    "vgg-c-nopad": [(3, 32, 10)],
    "vgg-d": [(3, 32, 100)],
    "wrn-16-2": [(3, 32, 10)],
    "resnet-18": [(3, 32, 10)],
    "resnet-34": [(3, 32, 100)],
    "resnet-50": [(3, 64, 10)],
    "vit-tiny": [(1, 28, 10), (3, 8, 5)],
}
# Language models: (vocab_size, block_size) of their forward test (tests/test_transformers.py).
TEXT_FORWARD_CASES = {"gpt-mini": [(65, 16)]}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def linear(fin: int, fout: int, bias: bool = True) -> int:
    return fin * fout + (fout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def vgg_params(one_by_one: bool, classes: int) -> int:
    """VGG-C / VGG-D on 3-channel input, counted layer by layer."""
    third = 1 if one_by_one else 3
    total = conv(3, 64, 3) + conv(64, 64, 3)
    total += conv(64, 128, 3) + conv(128, 128, 3)
    total += conv(128, 256, 3) + conv(256, 256, 3) + conv(256, 256, third)
    total += conv(256, 512, 3) + conv(512, 512, 3) + conv(512, 512, third)
    total += conv(512, 512, 3) + conv(512, 512, 3) + conv(512, 512, third)
    total += bn(64) * 2 + bn(128) * 2 + bn(256) * 3 + bn(512) * 6
    # Classifier: the two hidden Linear layers feed BatchNorm, so they carry no bias.
    total += linear(512, 512, bias=False) + bn(512) + linear(512, 512, bias=False) + bn(512)
    return total + linear(512, classes)


def vgg_c_paper_params(classes: int, side: int = 2) -> int:
    """VGG-C as the SNIP/ITOP code builds it: every conv has a bias, the classifier's Linear
    layers too, and the flattened 512 x side x side map feeds the first Linear layer."""
    total = conv(3, 64, 3, True) + conv(64, 64, 3, True)
    total += conv(64, 128, 3, True) + conv(128, 128, 3, True)
    total += conv(128, 256, 3, True) + conv(256, 256, 3, True) + conv(256, 256, 1, True)
    total += conv(256, 512, 3, True) + conv(512, 512, 3, True) + conv(512, 512, 1, True)
    total += conv(512, 512, 3, True) + conv(512, 512, 3, True) + conv(512, 512, 1, True)
    total += bn(64) * 2 + bn(128) * 2 + bn(256) * 3 + bn(512) * 6
    total += linear(512 * side * side, 512) + bn(512) + linear(512, 512) + bn(512)
    return total + linear(512, classes)


def wrn_16_2_params(classes: int) -> int:
    """WRN-16-2: n=2 blocks per group, widths 16, 32, 64, 128."""

    def block(cin: int, cout: int) -> int:
        shortcut = conv(cin, cout, 1) if cin != cout else 0
        return bn(cin) + conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + shortcut

    total = conv(3, 16, 3)
    total += block(16, 32) + block(32, 32)
    total += block(32, 64) + block(64, 64)
    total += block(64, 128) + block(128, 128)
    return total + bn(128) + linear(128, classes)


PARAM_CASES = [
    # name, in_channels, image_size, classes, expected
    ("lenet-300-100", 1, 28, 10, 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),  # 266,610
    ("lenet-300-100", 3, 32, 10, 3072 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
    # conv1 20*1*25+20, conv2 50*20*25+50, fc1 (50*4*4)*500+500, fc2 500*10+10 = 431,080
    ("lenet-5-caffe", 1, 28, 10, 520 + 25_050 + 400_500 + 5_010),
    # 32x32: 32 -> 28 -> 14 -> 10 -> 5, so fc1 has 50*5*5 inputs
    ("lenet-5-caffe", 3, 32, 10, 3 * 20 * 25 + 20 + 25_050 + 1250 * 500 + 500 + 5_010),
    ("mlp-cifar", 3, 32, 10, 3072 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 10 + 10),  # 3,676,682
    ("vgg-c", 3, 32, 10, vgg_c_paper_params(10)),  # 11,323,466 (the authors' VGG-C)
    ("vgg-c", 3, 32, 100, vgg_c_paper_params(100)),
    ("vgg-c-nopad", 3, 32, 10, vgg_params(one_by_one=True, classes=10)),  # 10,531,786
    ("vgg-d", 3, 32, 10, vgg_params(one_by_one=False, classes=10)),
    ("wrn-16-2", 3, 32, 10, wrn_16_2_params(10)),  # 691,674
    ("wrn-28-10", 3, 32, 10, 36_479_194),
    ("resnet-18", 3, 32, 10, 11_173_962),
    ("resnet-34", 3, 32, 10, 21_282_122),
    ("resnet-50", 3, 224, 1000, 25_557_032),
]


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register models without leaking them into other tests."""
    monkeypatch.setattr(registry_module, "_REGISTRY", registry_module._REGISTRY.copy())


# --------------------------------------------------------------------------- registry


def test_list_models_is_sorted_and_complete() -> None:
    names = list_models()
    assert names == sorted(names)
    expected = {
        "lenet-300-100",
        "lenet-5-caffe",
        "mlp-cifar",
        "vgg-c",
        "vgg-c-nopad",
        "vgg-d",
        "wrn-<depth>-<width>",
        "wrn-28-10",
        "wrn-16-8",
        "resnet-18",
        "resnet-34",
        "resnet-50",
    }
    assert expected <= set(names)


def test_every_registered_model_has_a_forward_test() -> None:
    for spec in model_specs():
        if spec.pattern is None:
            assert spec.name in {**FORWARD_CASES, **TEXT_FORWARD_CASES}, f"add {spec.name} to FORWARD_CASES"
        else:
            assert any(spec.pattern.fullmatch(n) for n in FORWARD_CASES), spec.name


def test_specs_carry_descriptions() -> None:
    specs = model_specs()
    assert all(isinstance(s, ModelSpec) for s in specs)
    for spec in specs:
        assert spec.description and "\n" not in spec.description
    assert get_model_spec("wrn-28-10").name == "wrn-<depth>-<width>"
    assert get_model_spec("resnet-18").name == "resnet-18"


def test_names_are_case_insensitive() -> None:
    model = build_model(" LeNet-300-100", in_channels=1, num_classes=10, image_size=28)
    assert n_params(model) == 266_610


def test_register_model_adds_a_buildable_model(scratch_registry: None) -> None:
    @register_model("tiny-net", description="a test model")
    def tiny(*, in_channels: int, num_classes: int, image_size: int, hidden: int = 4) -> nn.Module:
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    assert "tiny-net" in list_models()
    assert get_model_spec("tiny-net").description == "a test model"
    model = build_model("tiny-net", in_channels=2, num_classes=3, image_size=5, hidden=7)
    assert model[1].in_features == 50 and model[1].out_features == 7
    assert model(torch.zeros(2, 2, 5, 5)).shape == (2, 3)

    with pytest.raises(ConfigError, match="already registered"):
        register_model("tiny-net", description="again")(tiny)
    register_model("tiny-net", description="replaced", replace=True)(tiny)
    assert get_model_spec("tiny-net").description == "replaced"


def test_scratch_registry_does_not_leak() -> None:
    assert "tiny-net" not in list_models()


def test_factory_must_return_a_module(scratch_registry: None) -> None:
    register_model("not-a-net", description="broken")(lambda **_: 42)
    with pytest.raises(TypeError, match="nn.Module"):
        build_model("not-a-net", in_channels=1, num_classes=2, image_size=4)


# --------------------------------------------------------------------------- forward passes


@pytest.mark.parametrize(
    ("name", "channels", "side", "classes"),
    [(name, *case) for name, cases in FORWARD_CASES.items() for case in cases],
)
def test_forward_gives_finite_logits(name: str, channels: int, side: int, classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, num_classes=classes, image_size=side)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, channels, side, side))
    assert logits.shape == (2, classes)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["lenet-5-caffe", "wrn-16-2", "vgg-c"])
def test_training_step_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=4, image_size=16)
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(("name", "channels", "side", "classes", "expected"), PARAM_CASES)
def test_parameter_counts(name: str, channels: int, side: int, classes: int, expected: int) -> None:
    model = build_model(name, in_channels=channels, num_classes=classes, image_size=side)
    assert n_params(model) == expected


def test_hand_counts_match_known_values() -> None:
    assert vgg_params(one_by_one=False, classes=10) == 15_250_378
    assert vgg_c_paper_params(10) == 11_323_466
    assert vgg_params(one_by_one=True, classes=10) == 10_531_786
    assert wrn_16_2_params(10) == 691_674


# --------------------------------------------------------------------------- shapes from args


def test_lenet_300_100_input_size_follows_arguments() -> None:
    model = build_model("lenet-300-100", in_channels=3, num_classes=7, image_size=32)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3072, 300), (300, 100), (100, 7)]


def test_lenet_5_caffe_feature_size_follows_image_size() -> None:
    model = build_model("lenet-5-caffe", in_channels=3, num_classes=5, image_size=32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert convs[0].in_channels == 3
    assert linears[0].in_features == 50 * 5 * 5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    smallest = build_model("lenet-5-caffe", in_channels=1, num_classes=10, image_size=16)
    assert smallest(torch.randn(2, 1, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("name", ["vgg-c", "vgg-d", "wrn-16-2", "resnet-18", "resnet-50"])
def test_conv_models_follow_channels_and_classes(name: str) -> None:
    model = build_model(name, in_channels=1, num_classes=7, image_size=28)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert first_conv.in_channels == 1
    assert last_linear.out_features == 7


def test_vgg_skips_pools_on_small_images() -> None:
    pools = lambda m: sum(isinstance(x, nn.MaxPool2d) for x in m.modules())  # noqa: E731
    assert pools(build_model("vgg-d", in_channels=3, num_classes=10, image_size=32)) == 5
    small = build_model("vgg-c-nopad", in_channels=1, num_classes=10, image_size=8)
    assert pools(small) == 3
    small.eval()
    with torch.no_grad():
        assert small(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name", ["vgg-c", "vgg-c-nopad"])
def test_vgg_c_uses_1x1_convs_in_last_three_stages(name: str) -> None:
    model = build_model(name, in_channels=3, num_classes=10, image_size=32)
    kernels = [m.kernel_size[0] for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert kernels == [3, 3, 3, 3, 3, 3, 1, 3, 3, 1, 3, 3, 1]


def test_vgg_c_as_the_authors_build_it() -> None:
    """The SNIP/ITOP code pads its 1x1 convs by 1: 32x32 CIFAR ends 512x2x2, the classifier
    takes 2048 inputs in the order Linear-ReLU-BN, and every layer has a bias."""
    model = build_model("vgg-c", in_channels=3, num_classes=10, image_size=32).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.padding == (1, 1) and c.bias is not None for c in convs)
    with torch.no_grad():
        assert model.features(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 2, 2)
    kinds = [type(m) for m in model.classifier]
    assert kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Linear]
    assert model.classifier[1].in_features == 2048 and model.classifier[1].bias is not None
    # 28x28: 28 -> 14 -> 7 -> 9 (padded 1x1) -> 4 -> 6 -> 3 -> 5 -> 2
    assert build_model("vgg-c", in_channels=1, num_classes=10, image_size=28).classifier[1].in_features == 2048
    nopad = build_model("vgg-c-nopad", in_channels=3, num_classes=10, image_size=32)
    assert [m for m in nopad.modules() if isinstance(m, nn.Linear)][0].in_features == 512


def test_vgg_c_initialisation_is_pytorchs_unless_asked() -> None:
    torch.manual_seed(0)
    default = build_model("vgg-c", in_channels=3, num_classes=10, image_size=32)
    torch.manual_seed(0)
    kaiming = build_model("vgg-c", in_channels=3, num_classes=10, image_size=32, init="kaiming")
    w0, w1 = default.features[0].weight, kaiming.features[0].weight
    bound = 1 / (3 * 9) ** 0.5  # PyTorch's default: uniform within 1/sqrt(fan_in)
    assert float(w0.detach().abs().max()) <= bound and float(default.features[0].bias.detach().abs().max()) > 0
    assert torch.all(kaiming.features[0].bias == 0) and not torch.equal(w0, w1)
    with pytest.raises(ConfigError, match="init must be one of"):
        build_model("vgg-c", in_channels=3, num_classes=10, image_size=32, init="xavier")


def test_vgg_c_refuses_images_too_small_for_its_pools() -> None:
    with pytest.raises(ConfigError, match="vgg-c-nopad"):
        build_model("vgg-c", in_channels=3, num_classes=10, image_size=2)


# --------------------------------------------------------------------------- layer conventions


@pytest.mark.parametrize("name", ["lenet-5-caffe", "mlp-cifar", "vgg-c", "wrn-16-2", "resnet-18"])
def test_weights_live_in_plain_linear_and_conv_modules(name: str) -> None:
    model = build_model(name, in_channels=1, num_classes=10, image_size=28)
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() > 1:
                assert type(module) in (nn.Linear, nn.Conv2d), f"{name}: {type(module)}.{pname}"


@pytest.mark.parametrize("name", ["vgg-d", "wrn-16-2", "resnet-18", "resnet-50"])
def test_convs_before_batchnorm_have_no_bias(name: str) -> None:
    model = build_model(name, in_channels=3, num_classes=10, image_size=32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is None for c in convs)


def test_initialisation_policy() -> None:
    model = build_model("resnet-18", in_channels=3, num_classes=10, image_size=32)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # Kaiming-normal fan_out: std = sqrt(2 / (out_channels * k * k)).
    conv = model.layer4[0].conv2
    expected_std = (2.0 / (512 * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.05


def test_zero_init_residual() -> None:
    model = build_model(
        "resnet-50", in_channels=3, num_classes=10, image_size=64, zero_init_residual=True
    )
    for block in [*model.layer1, *model.layer4]:
        assert torch.all(block.bn3.weight == 0)
        assert torch.all(block.bn1.weight == 1)
    plain = build_model("resnet-18", in_channels=3, num_classes=10, image_size=32)
    assert torch.all(plain.layer1[0].bn2.weight == 1)
    zeroed = build_model(
        "resnet-18", in_channels=3, num_classes=10, image_size=32, zero_init_residual=True
    )
    assert torch.all(zeroed.layer1[0].bn2.weight == 0)


def test_resnet_stems() -> None:
    cifar = build_model("resnet-18", in_channels=3, num_classes=10, image_size=32)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    imagenet = build_model("resnet-50", in_channels=3, num_classes=10, image_size=64)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    # v1.5: the stride of a downsampling bottleneck sits on its 3x3 convolution.
    assert imagenet.layer2[0].conv1.stride == (1, 1)
    assert imagenet.layer2[0].conv2.stride == (2, 2)


def test_wrn_dropout_option() -> None:
    model = build_model("wrn-16-2", in_channels=3, num_classes=10, image_size=32, dropout=0.3)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert all(b.dropout == 0.3 for b in model.block1)
    with pytest.raises(ConfigError, match="dropout"):
        build_model("wrn-16-2", in_channels=3, num_classes=10, image_size=32, dropout=1.5)


# --------------------------------------------------------------------------- bad input


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'resnet-18'"):
        build_model("resnet18", in_channels=3, num_classes=10, image_size=32)
    with pytest.raises(ValueError, match="did you mean"):
        build_model("wrn-28", in_channels=3, num_classes=10, image_size=32)


def test_lenet_5_caffe_rejects_small_images() -> None:
    with pytest.raises(ConfigError, match="16"):
        build_model("lenet-5-caffe", in_channels=1, num_classes=10, image_size=8)
    with pytest.raises(ConfigError):
        build_model("lenet-5-caffe", in_channels=1, num_classes=10, image_size=15)


@pytest.mark.parametrize("name", ["wrn-20-2", "wrn-4-2", "wrn-0-1", "wrn-16-0"])
def test_bad_wrn_names(name: str) -> None:
    with pytest.raises(ConfigError, match="WRN"):
        build_model(name, in_channels=3, num_classes=10, image_size=32)


def test_pattern_template_is_not_buildable() -> None:
    with pytest.raises(ConfigError, match="e.g. wrn-"):
        build_model("wrn-<depth>-<width>", in_channels=3, num_classes=10, image_size=32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": 0, "num_classes": 10, "image_size": 28}, "in_channels"),
        ({"in_channels": 1, "num_classes": 0, "image_size": 28}, "num_classes"),
        ({"in_channels": 1, "num_classes": 10, "image_size": -1}, "image_size"),
        ({"in_channels": 1, "num_classes": 10, "image_size": 28.0}, "image_size"),
        ({"in_channels": True, "num_classes": 10, "image_size": 28}, "in_channels"),
    ],
)
def test_bad_sizes(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model("lenet-300-100", **kwargs)


def test_unknown_and_conflicting_options() -> None:
    with pytest.raises(ConfigError, match="no option 'dropout'.*stem, zero_init_residual"):
        build_model("resnet-18", in_channels=3, num_classes=10, image_size=32, dropout=0.1)
    with pytest.raises(ConfigError, match="set by its name"):
        build_model("wrn-16-2", in_channels=3, num_classes=10, image_size=32, depth=22)
    with pytest.raises(ConfigError, match="stem"):
        build_model("resnet-18", in_channels=3, num_classes=10, image_size=32, stem="tiny")
    with pytest.raises(ConfigError, match="zero_init_residual"):
        build_model(
            "resnet-18", in_channels=3, num_classes=10, image_size=32, zero_init_residual="no"
        )
