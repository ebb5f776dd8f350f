"""The transformer models of the zoo (vit-tiny, gpt-mini) and shape arguments from datasets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from itop.errors import ConfigError
from itop.models import build_model
from itop.models.gpt import GPT
from itop.models.vit import ViT
from itop.sparsifier import Sparsifier


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine it is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_vit_forward_and_options():
    model = build_model("vit-tiny", in_channels=1, num_classes=10, image_size=28)
    assert isinstance(model, ViT) and model.pos_embed.shape == (1, 50, 64)
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    deep = build_model("vit-tiny", in_channels=3, num_classes=4, image_size=8, patch_size=2,
                       dim=32, depth=2, heads=2, mlp_ratio=3)
    assert len(deep.blocks) == 2 and deep.pos_embed.shape == (1, 17, 32)
    assert deep.blocks[0].linear1.out_features == 96
    assert deep(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_vit_bad_options():
    with pytest.raises(ConfigError, match="not a multiple of patch_size 3"):
        build_model("vit-tiny", in_channels=1, num_classes=10, image_size=28, patch_size=3)
    with pytest.raises(ConfigError, match="dim 30 is not a multiple of heads 4"):
        build_model("vit-tiny", in_channels=1, num_classes=10, image_size=28, dim=30)
    with pytest.raises(ConfigError, match="built for 28x28 images"):
        build_model("vit-tiny", in_channels=1, num_classes=10, image_size=28)(torch.randn(1, 1, 32, 32))
    with pytest.raises(ConfigError, match="no option 'width'"):
        build_model("vit-tiny", in_channels=1, num_classes=10, image_size=28, width=3)


def test_vit_sparsifies_its_matrices_only():
    model = build_model("vit-tiny", in_channels=1, num_classes=10, image_size=28, depth=2)
    sp = Sparsifier(model, sparsity=0.9, seed=0)
    assert sp.layer_names() == [
        "patch_embed.weight",
        "blocks.0.self_attn.in_proj_weight", "blocks.0.self_attn.out_proj.weight",
        "blocks.0.linear1.weight", "blocks.0.linear2.weight",
        "blocks.1.self_attn.in_proj_weight", "blocks.1.self_attn.out_proj.weight",
        "blocks.1.linear1.weight", "blocks.1.linear2.weight",
        "head.weight",
    ]
    assert sp.actual_sparsity() == pytest.approx(0.9, abs=1e-4)


def test_gpt_forward_is_causal():
    torch.manual_seed(0)
    model = build_model("gpt-mini", vocab_size=20, block_size=12, n_layer=2, n_head=2, n_embd=16).eval()
    assert isinstance(model, GPT)
    ids = torch.randint(0, 20, (2, 12))
    logits = model(ids)
    assert logits.shape == (2, 12, 20)
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 20
    other = model(changed)
    assert torch.allclose(logits[:, :7], other[:, :7], atol=1e-6)  # the past ignores the future
    assert not torch.allclose(logits[:, 7:], other[:, 7:])
    assert model(ids[:, :5]).shape == (2, 5, 20)


def test_gpt_options_and_errors():
    tied = build_model("gpt-mini", vocab_size=20, block_size=8, n_layer=1, n_embd=16, tie_weights=True)
    assert tied.head.weight is tied.tok_embed.weight
    with pytest.raises(ConfigError, match="longer than block_size 8"):
        tied(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ConfigError, match="n_embd 30 is not a multiple of n_head 4"):
        build_model("gpt-mini", vocab_size=20, block_size=8, n_embd=30)
    with pytest.raises(ConfigError, match="tie_weights must be true or false"):
        build_model("gpt-mini", vocab_size=20, block_size=8, tie_weights="yes")


def test_gpt_sparsity_leaves_embeddings_dense_and_tied_head_dense():
    model = build_model("gpt-mini", vocab_size=20, block_size=8, n_layer=1, n_embd=16, n_head=2)
    names = Sparsifier(model, sparsity=0.8, seed=0).layer_names()
    assert "head.weight" in names and not any("embed" in n for n in names)
    tied = build_model("gpt-mini", vocab_size=20, block_size=8, n_layer=1, n_embd=16, n_head=2,
                       tie_weights=True)
    assert "head.weight" not in Sparsifier(tied, sparsity=0.8, seed=0).layer_names()


def test_models_receive_only_the_shape_arguments_they_name():
    # an image model given text arguments ignores them; a language model given only image
    # arguments says what it needs
    model = build_model("lenet-300-100", in_channels=1, num_classes=10, image_size=8,
                        vocab_size=5, block_size=3)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ConfigError, match="needs vocab_size, block_size.*train it on a text dataset"):
        build_model("gpt-mini", in_channels=1, num_classes=10, image_size=28)
    with pytest.raises(ConfigError, match="needs in_channels, image_size.*image dataset"):
        build_model("vit-tiny", num_classes=10, vocab_size=5, block_size=3)
    with pytest.raises(ConfigError, match="vocab_size must be an integer"):
        build_model("gpt-mini", vocab_size=2.5, block_size=3)


def test_gpt_learns_a_repeating_text():
    """Sixty steps of sparse training fit a periodic character stream."""
    torch.manual_seed(0)
    model = build_model("gpt-mini", vocab_size=5, block_size=10, n_layer=1, n_head=2, n_embd=32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    import itop

    sp = itop.build("rigl", model, opt, sparsity=0.5, update_interval=10, total_steps=60, seed=0)
    stream = torch.arange(200) % 5
    for _ in range(60):
        start = torch.randint(0, 189, (8,))
        rows = stream[start.unsqueeze(1) + torch.arange(11)]
        loss = nn.functional.cross_entropy(model(rows[:, :-1]).flatten(0, 1), rows[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
    assert loss.item() < 0.2
    assert sp.itop_rate() > 0.5
