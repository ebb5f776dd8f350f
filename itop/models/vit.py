"""A small vision transformer for MNIST-sized images: the ``vit-tiny`` entry.

Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words: Transformers for Image Recognition
at Scale" (ViT): the image is cut into ``patch_size x patch_size`` patches, each linearly
embedded (a strided convolution), a learnt class token and learnt position embeddings are
added, and pre-norm transformer encoder blocks (``nn.TransformerEncoderLayer`` with
``norm_first=True``: multi-head self-attention and a GELU MLP, each in a residual branch) feed a
layer-normalised class token to a linear head. On 28x28 images with patch 4 that is 49 patch
tokens plus the class token.

Every matrix of the model is one the sparsity engine sparsifies by default: the patch
embedding (``Conv2d``), each block's packed Q/K/V projection (``nn.MultiheadAttention``'s
``in_proj_weight``, counted as three matrices by ERK) and output projection, the two MLP
``Linear`` layers and the head. The class token, position embeddings, layer norms and biases
stay dense.
"""

from __future__ import annotations

import torch
from torch import nn

from itop.errors import ConfigError
from itop.models._common import check_int, check_probability
from itop.models.registry import register_model


class ViT(nn.Module):
    """Vision transformer over ``(N, C, H, W)`` images.

    Args:
        in_channels: Input channels.
        num_classes: Number of output logits.
        image_size: Side length of the square input images (a multiple of ``patch_size``).
        patch_size: Side length of the square patches.
        dim: Embedding width ``E``.
        depth: Number of transformer blocks.
        heads: Attention heads (must divide ``dim``).
        mlp_ratio: Hidden width of each block's MLP, as a multiple of ``dim``.
        dropout: Dropout probability in the blocks.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels")
        num_classes = check_int(num_classes, "num_classes")
        image_size = check_int(image_size, "image_size")
        patch_size = check_int(patch_size, "patch_size")
        dim = check_int(dim, "dim")
        depth = check_int(depth, "depth")
        heads = check_int(heads, "heads")
        mlp_ratio = check_int(mlp_ratio, "mlp_ratio")
        dropout = check_probability(dropout, "dropout")
        if image_size % patch_size:
            raise ConfigError(
                f"image_size {image_size} is not a multiple of patch_size {patch_size}; "
                "choose a patch_size that divides it (e.g. 4 for 28x28, 2 for 8x8)"
            )
        if dim % heads:
            raise ConfigError(f"dim {dim} is not a multiple of heads {heads}; choose heads dividing dim")
        self.image_size = image_size
        self.patch_size = patch_size
        tokens = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, dim_feedforward=mlp_ratio * dim, dropout=dropout,
                activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # ViT reference initialisation: truncated-normal(0.02) tokens, Xavier-uniform matrices.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
                nn.init.xavier_uniform_(module.in_proj_weight)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        fan_in = self.patch_embed.weight[0].numel()
        nn.init.trunc_normal_(self.patch_embed.weight, std=(1.0 / fan_in) ** 0.5)
        nn.init.zeros_(self.patch_embed.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, H, W)`` images to ``(N, num_classes)`` logits."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ConfigError(
                f"this ViT was built for {self.image_size}x{self.image_size} images, got "
                f"{tuple(x.shape[-2:])}; build it with the dataset's image_size"
            )
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, T, E)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        h = torch.cat([cls, tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, 0]))


@register_model(
    "vit-tiny",
    description="vision transformer, patch 4, 4 blocks of width 64 (ViT, Dosovitskiy et al. 2021)",
)
def vit_tiny(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    patch_size: int = 4,
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: int = 2,
    dropout: float = 0.0,
) -> ViT:
    """Build a small :class:`ViT` (about 140k parameters on 28x28 images with 10 classes).

    Options ``patch_size``, ``dim``, ``depth``, ``heads``, ``mlp_ratio`` and ``dropout`` are
    the :class:`ViT` arguments.
    """
    return ViT(in_channels, num_classes, image_size, patch_size, dim, depth, heads, mlp_ratio, dropout)
