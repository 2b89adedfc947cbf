"""Tower forwards with taps, mirroring open_clip 3.3.0 operation for operation.

open_clip's ``ResidualAttentionBlock.forward`` is ``x = x + ls_1(attn(ln_1(x))); x = x + ls_2(mlp(ln_2(x)))`` with
``mlp = Sequential(c_fc, gelu, c_proj)``. :func:`block_forward` performs the same operations in the same order and
calls the taps in between, so with no taps it is bitwise equal to the block (pinned by tests). Only the plain
``ResidualAttentionBlock`` layout is supported for taps; other block types raise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from frozen_clip.errors import ConfigError
from frozen_clip.taps import Taps, TapSite, apply


def block_forward(blk: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None, taps: Taps,
                  site: TapSite) -> torch.Tensor:
    """One residual attention block with the taps of ``site`` applied."""
    tower, layer = site.tower, site.layer
    x = apply(taps.get("block_in", tower, layer), x, site)
    x_in = x
    a = apply(taps.get("attn_in", tower, layer), blk.ln_1(x), site)
    mask = attn_mask.to(a.dtype) if attn_mask is not None else None
    replace = taps.get("attn", tower, layer)  # at most one (Taps.add); replaces the attention call itself
    if replace:
        x = x + blk.ls_1(replace[0](a, site, blk.attn, mask))
    else:
        x = x + blk.ls_1(blk.attn(a, a, a, need_weights=False, attn_mask=mask)[0])
    h = apply(taps.get("mlp_hidden", tower, layer), blk.mlp.c_fc(blk.ln_2(x)), site)
    x = x + blk.ls_2(blk.mlp.c_proj(blk.mlp.gelu(h)))
    return apply(taps.get("block_out", tower, layer), x, site, x_in)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, attn_mask: torch.Tensor | None, taps: Taps, tower: str,
               grid_size: tuple[int, int] | None, n_prefix: int) -> torch.Tensor:
    """All blocks of a tower, batch-first, with taps."""
    # open_clip is imported where a tower runs, not with this module: methods import it, and resolving their
    # configs should not pay for open_clip (torchvision, timm)
    from open_clip.transformer import ResidualAttentionBlock
    n_layers = len(blocks)
    for layer, blk in enumerate(blocks):
        if not isinstance(blk, ResidualAttentionBlock):
            raise ConfigError(f"taps need open_clip ResidualAttentionBlock blocks; {tower} block {layer} is "
                              f"{type(blk).__name__}")
        site = TapSite(tower, layer, n_layers, blk.ln_1.normalized_shape[0], grid_size, n_prefix)
        x = block_forward(blk, x, attn_mask, taps, site)
    return x


def visual_forward(visual: nn.Module, images: torch.Tensor, taps: Taps) -> torch.Tensor:
    """``VisionTransformer.forward`` (pooled, projected features) with taps; mirrors ``_embeds``/``_pool``."""
    from open_clip.transformer import VisionTransformer, _expand_token
    if not isinstance(visual, VisionTransformer):
        raise ConfigError(f"image-tower taps need an open_clip VisionTransformer, got {type(visual).__name__}")
    if not visual.transformer.batch_first:
        raise ConfigError("image-tower taps need a batch-first transformer (open_clip >= 2.26)")
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([_expand_token(visual.class_embedding, x.shape[0]).to(x.dtype), x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    width = x.shape[-1]
    n_layers = len(visual.transformer.resblocks)
    x = apply(taps.get("tower_in", "visual", -1), x, TapSite("visual", -1, n_layers, width, visual.grid_size, 1))
    x = visual.patch_dropout(x)
    x = visual.ln_pre(x)
    x = run_blocks(visual.transformer.resblocks, x, None, taps, "visual", tuple(visual.grid_size), 1)
    pooled, _tokens = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled


class TextTower:
    """Uniform access to the text tower of ``CLIP`` (attributes at top level) and ``CustomTextCLIP`` (``.text``)."""

    def __init__(self, model: nn.Module) -> None:
        owner = model.text if hasattr(model, "text") else model
        self.owner = owner
        self.token_embedding: nn.Embedding = owner.token_embedding
        self.positional_embedding: torch.Tensor = owner.positional_embedding
        self.transformer: nn.Module = owner.transformer
        self.ln_final: nn.Module = owner.ln_final
        self.text_projection: Any = owner.text_projection
        self.attn_mask: torch.Tensor | None = getattr(owner, "attn_mask", None)
        self.pool_type: str = getattr(owner, "text_pool_type", getattr(owner, "pool_type", "argmax"))
        self.has_cls_emb = getattr(owner, "cls_emb", None) is not None
        self.context_length: int = int(self.positional_embedding.shape[0])
        self.width: int = int(self.token_embedding.weight.shape[1])

    def supports_embedding_path(self) -> bool:
        """Whether the suite's token-embedding path reproduces this tower (causal mask + EOT argmax pooling)."""
        return (self.pool_type == "argmax" and not self.has_cls_emb and self.attn_mask is not None
                and getattr(self.transformer, "batch_first", True))

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """The final text projection (a matrix or an ``nn.Linear`` depending on the config)."""
        if self.text_projection is None:
            return pooled
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection

    def forward_embeddings(self, x: torch.Tensor, ids: torch.Tensor, taps: Taps) -> torch.Tensor:
        """Text features from token embeddings ``x`` ``[N, L, D]`` (L <= context length) and their ids ``[N, L]``.

        Mirrors ``CLIP.encode_text`` after ``token_embedding``. Positional embedding and causal mask are sliced to L,
        which is exact when every EOT lies within the first L positions.
        """
        if not self.supports_embedding_path():
            raise ConfigError("this text tower (cls token, non-argmax pooling or no causal mask) is not supported by "
                              "the token-embedding path")
        length = x.shape[1]
        cast = self.transformer.get_cast_dtype()
        x = x.to(cast) + self.positional_embedding[:length].to(cast)
        mask = self.attn_mask[:length, :length]
        n_layers = len(self.transformer.resblocks)
        x = apply(taps.get("tower_in", "text", -1), x, TapSite("text", -1, n_layers, self.width))
        x = run_blocks(self.transformer.resblocks, x, mask, taps, "text", None, 0)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
        return self.project(pooled)
