"""Small models and loops shared by the tests."""

import torch
from torch import nn


def mlp(d_in=64, hidden=(96, 48), classes=10):
    layers, prev = [nn.Flatten()], d_in
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, classes))
    return nn.Sequential(*layers)


def convnet(channels=3, classes=10):
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes),
    )


def batches(n, shape=(64,), classes=10, batch=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(n)
    ]


def train_step(model, optimizer, sparsifier, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return sparsifier.step() if sparsifier is not None else None
