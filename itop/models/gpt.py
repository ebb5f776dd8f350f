"""A small GPT-style causal language model: the ``gpt-mini`` entry (char-level by default).

Radford et al., 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2): token and
learnt position embeddings, pre-norm transformer blocks with causally masked multi-head
self-attention and a GELU MLP (``nn.TransformerEncoderLayer`` with ``norm_first=True`` and a
causal mask: a decoder-only block is exactly that), a final layer norm and a linear LM head.
Weights are initialised from ``N(0, 0.02)`` as in GPT-2, with the residual output projections
scaled by ``1/sqrt(2 * n_layer)``.

The model maps ``(N, T)`` token ids to ``(N, T, vocab_size)`` next-token logits; train it with
``cross_entropy(logits.flatten(0, 1), targets.flatten())``.

Sparsified by default: each block's packed Q/K/V projection (MHA ``in_proj_weight``, three
matrices for ERK), its output projection, the two MLP layers and the LM head. The token and
position embeddings stay dense. With ``tie_weights=True`` the head shares the token embedding's
matrix, as in GPT-2; the sparsity engine then leaves that shared matrix dense (with a warning)
unless a target pattern names it, because sparsifying the head would sparsify the embedding.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from itop.errors import ConfigError
from itop.models._common import check_bool, check_int, check_probability
from itop.models.registry import register_model


class GPT(nn.Module):
    """Decoder-only transformer language model.

    Args:
        vocab_size: Number of tokens.
        block_size: Longest context (the position table's length).
        n_layer: Number of transformer blocks.
        n_head: Attention heads (must divide ``n_embd``).
        n_embd: Embedding width.
        dropout: Dropout probability on embeddings and in the blocks.
        tie_weights: Share the token embedding matrix with the LM head (GPT-2 does).
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        vocab_size = check_int(vocab_size, "vocab_size")
        self.block_size = check_int(block_size, "block_size")
        n_layer = check_int(n_layer, "n_layer")
        n_head = check_int(n_head, "n_head")
        n_embd = check_int(n_embd, "n_embd")
        dropout = check_probability(dropout, "dropout")
        check_bool(tie_weights, "tie_weights")
        if n_embd % n_head:
            raise ConfigError(f"n_embd {n_embd} is not a multiple of n_head {n_head}; choose n_head dividing n_embd")
        self.tok_embed = nn.Embedding(vocab_size, n_embd)
        self.pos_embed = nn.Embedding(self.block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                n_embd, n_head, dim_feedforward=4 * n_embd, dropout=dropout,
                activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(n_layer)
        )
        self.norm = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        mask = torch.ones(self.block_size, self.block_size, dtype=torch.bool).triu(1)
        self.register_buffer("causal_mask", mask, persistent=False)  # True: may not attend
        self._init_weights(n_layer)
        if tie_weights:
            self.head.weight = self.tok_embed.weight

    def _init_weights(self, n_layer: int) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.normal_(module.in_proj_weight, std=0.02)
                nn.init.zeros_(module.in_proj_bias)
        residual_std = 0.02 / math.sqrt(2 * n_layer)
        for block in self.blocks:
            nn.init.normal_(block.self_attn.out_proj.weight, std=residual_std)
            nn.init.normal_(block.linear2.weight, std=residual_std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Map ``(N, T)`` token ids (``T <= block_size``) to ``(N, T, vocab_size)`` logits."""
        if idx.dim() != 2:
            raise ConfigError(f"GPT expects (N, T) token ids, got shape {tuple(idx.shape)}")
        length = idx.shape[1]
        if length > self.block_size:
            raise ConfigError(
                f"sequence of {length} tokens is longer than block_size {self.block_size}; "
                "build the model with a larger block_size or feed shorter sequences"
            )
        positions = torch.arange(length, device=idx.device)
        h = self.drop(self.tok_embed(idx) + self.pos_embed(positions))
        mask = self.causal_mask[:length, :length]
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        return self.head(self.norm(h))


@register_model(
    "gpt-mini",
    description="GPT-style causal LM, 4 blocks of width 128 (GPT-2 architecture, Radford et al. 2019); "
    "needs a text dataset",
)
def gpt_mini(
    *,
    vocab_size: int,
    block_size: int,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    dropout: float = 0.0,
    tie_weights: bool = False,
) -> GPT:
    """Build a small :class:`GPT`; ``vocab_size`` and ``block_size`` come from the dataset.

    Options ``n_layer``, ``n_head``, ``n_embd``, ``dropout`` and ``tie_weights`` are the
    :class:`GPT` arguments.
    """
    return GPT(vocab_size, block_size, n_layer, n_head, n_embd, dropout, tie_weights)
