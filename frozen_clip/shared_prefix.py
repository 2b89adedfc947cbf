"""The text tower on prompts that share a prefix: the shared positions are computed once, not once per class.

CoOp's prompts (``csc: false``, class token at the end) are ``[SOS] [V]_1 .. [V]_M [CLASS] . [EOS]``: the first
``1 + M`` positions are the same for every class. Under the causal mask the state at position ``t`` depends only on
positions ``<= t``, and every other operation of a block is per token, so the hidden states of the shared positions
are identical for all classes at every layer. This module runs them once (batch 1) and lets the class-specific
suffixes attend to the shared keys and values, which is exact up to floating-point reduction order (pinned against
:meth:`~frozen_clip.backbone.FrozenCLIP.encode_text_embeddings` by a test) and turns the text cost of C classes from
``C x (P + S)`` positions into ``P + C x S``.

Mirrors :func:`frozen_clip.towers.block_forward` without taps: ``x + ls_1(attn(ln_1(x)))``, then
``x + ls_2(c_proj(gelu(c_fc(ln_2(x)))))``; attention is the block's own ``nn.MultiheadAttention`` weights (fused
``in_proj``, ``out_proj``) through ``scaled_dot_product_attention`` with the tower's additive causal mask sliced to
the positions in use. Requires the EOT of every prompt to lie in the suffix.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from frozen_clip.backbone import FrozenCLIP


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, L, D]`` -> ``[B, H, L, D / H]``."""
    b, length, width = x.shape
    return x.view(b, length, n_heads, width // n_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, d]`` -> ``[B, L, H d]``."""
    b, n_heads, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, n_heads * d)


def _attention(attn: nn.MultiheadAttention, a_prefix: torch.Tensor, a_suffix: torch.Tensor,
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal self-attention of ``[prefix; suffix]`` with the prefix computed once (batch 1)."""
    n_prefix, n_cls = a_prefix.shape[1], a_suffix.shape[0]
    q_p, k_p, v_p = F.linear(a_prefix, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q_s, k_s, v_s = F.linear(a_suffix, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    h = attn.num_heads
    out_p = F.scaled_dot_product_attention(_heads(q_p, h), _heads(k_p, h), _heads(v_p, h),
                                           attn_mask=mask[:n_prefix, :n_prefix])
    keys = torch.cat([k_p.expand(n_cls, -1, -1), k_s], dim=1)
    values = torch.cat([v_p.expand(n_cls, -1, -1), v_s], dim=1)
    out_s = F.scaled_dot_product_attention(_heads(q_s, h), _heads(keys, h), _heads(values, h),
                                           attn_mask=mask[n_prefix:, :])
    project = attn.out_proj
    return F.linear(_merge(out_p), project.weight, project.bias), F.linear(_merge(out_s), project.weight,
                                                                           project.bias)


def _mlp(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return blk.ls_2(blk.mlp.c_proj(blk.mlp.gelu(blk.mlp.c_fc(blk.ln_2(x)))))


def can_share(clip: FrozenCLIP) -> bool:
    """Whether the backbone's text tower is the plain causal ``ResidualAttentionBlock`` stack this module mirrors."""
    from open_clip.transformer import ResidualAttentionBlock
    text = clip.text
    return text.supports_embedding_path() and all(
        isinstance(blk, ResidualAttentionBlock) and isinstance(blk.attn, nn.MultiheadAttention)
        and blk.attn._qkv_same_embed_dim and blk.attn.batch_first for blk in text.transformer.resblocks)


def encode_text_shared_prefix(clip: FrozenCLIP, prefix: torch.Tensor, suffix: torch.Tensor,
                              ids: torch.Tensor) -> torch.Tensor:
    """Text features ``[C, E]`` of the prompts ``[prefix; suffix_c]``.

    Args:
        prefix: the shared token embeddings ``[P, D]`` (or ``[1, P, D]``), e.g. SOS + CoOp's context.
        suffix: the per-class token embeddings ``[C, S, D]`` (class name, ".", EOS, padding).
        ids: the token ids ``[C, P + S]`` of the whole prompts (they locate the EOT, which must be in the suffix).
    """
    text = clip.text
    prefix = prefix.unsqueeze(0) if prefix.dim() == 2 else prefix
    n_prefix, n_suffix = prefix.shape[1], suffix.shape[1]
    length = n_prefix + n_suffix
    eot = ids.argmax(dim=-1)
    if int(eot.min()) < n_prefix:
        raise ValueError(f"an EOT lies in the shared prefix (position {int(eot.min())} < {n_prefix})")
    cast = text.transformer.get_cast_dtype()
    pos = text.positional_embedding[:length].to(cast)
    x_p, x_s = prefix.to(cast) + pos[:n_prefix], suffix.to(cast) + pos[n_prefix:]
    mask = text.attn_mask[:length, :length].to(cast)
    for blk in text.transformer.resblocks:
        out_p, out_s = _attention(blk.attn, blk.ln_1(x_p), blk.ln_1(x_s), mask)
        x_p, x_s = x_p + blk.ls_1(out_p), x_s + blk.ls_1(out_s)
        x_p, x_s = x_p + _mlp(blk, x_p), x_s + _mlp(blk, x_s)
    x_s = text.ln_final(x_s)
    pooled = x_s[torch.arange(x_s.shape[0], device=x_s.device), eot - n_prefix]
    return text.project(pooled)
