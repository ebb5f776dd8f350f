import pytest
from torch import nn

from itop.errors import ConfigError
from itop.targets import TargetSelector, unwrap_model


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.emb = nn.Embedding(10, 4)
        self.convt = nn.ConvTranspose2d(8, 4, 2)
        self.fc = nn.Linear(4, 2)
        self.head = self.fc  # shared module: counted once


def test_default_selects_linear_and_conv_weights_only():
    names = [t.name for t in TargetSelector().select(Net())]
    assert names == ["conv.weight", "convt.weight", "fc.weight"]


def test_filters():
    sel = TargetSelector(include=lambda name, m, p: not isinstance(m, nn.ConvTranspose2d),
                         exclude=("fc*",))
    assert [t.name for t in sel.select(Net())] == ["conv.weight"]


def test_fixed_densities():
    targets = TargetSelector().select(Net())
    sel = TargetSelector(keep_first_dense=True, layer_density={"fc": 0.5}, dense=("convt.*",))
    assert sel.fixed_densities(targets) == {"conv.weight": 1.0, "convt.weight": 1.0, "fc.weight": 0.5}
    with pytest.raises(ConfigError, match="match no sparsified layer"):
        TargetSelector(layer_density={"nope": 0.5}).fixed_densities(targets)


def test_nothing_to_sparsify():
    with pytest.raises(ConfigError, match="no weights to sparsify"):
        TargetSelector().select(nn.Sequential(nn.ReLU()))


def test_unwrap():
    net = Net()
    assert unwrap_model(nn.DataParallel(net)) is net
