"""The text tower on prompts that share a prefix: the shared positions are computed once, not once per class.

CoOp's prompts (``csc: false``, class token at the end) are ``[SOS] [V]_1 .. [V]_M [CLASS] . [EOS]``: the first
``1 + M`` positions are the same for every class; HeBA's are ``[SOS] a photo of a [CLASS], a photo of a [CLASS].``
with the first 5 the same. Under the causal mask the state at position ``t`` depends only on positions ``<= t``, and
every other operation of a block is per token, so the hidden states of the shared positions are identical for all
classes at every layer. This module runs them once (batch 1) and lets the class-specific suffixes attend to the
shared keys and values, which is exact up to floating-point reduction order (pinned against
:meth:`~frozen_clip.backbone.FrozenCLIP.encode_text_embeddings` by tests) and turns the text cost of C classes from
``C x (P + S)`` positions into ``P + C x S``. The suffixes may come in several groups of different lengths (HeBA's
length buckets), all attending to the one prefix.

Runs the blocks through :func:`frozen_clip.towers.block_forward` on one flat sequence ``[1, T, D]`` of the positions
of all parts, with the attention replaced (an ``attn`` tap) by :func:`_attention`: the block's own
``nn.MultiheadAttention`` weights (fused ``in_proj``, ``out_proj``) through ``scaled_dot_product_attention`` per
part, with the tower's additive causal mask sliced to the positions in use. So every per-token operation of a block
(layer norms, projections, MLP) runs once per layer whatever the number of parts, and only the attention runs per
part. Taps at the per-token points (``block_in``, ``attn_in``, ``mlp_hidden``, ``block_out``) see
that flat sequence, which is exact only when they act on each token alone (HeBA's per-token linear adapters; not a
convolution over positions); ``tower_in`` and ``attn`` taps are refused. Requires the EOT of every prompt to lie in
the suffix.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from frozen_clip.taps import Taps, TapSite
from frozen_clip.towers import TextTower, run_blocks

if TYPE_CHECKING:  # backbone imports this module for FrozenCLIP.encode_text(share_prefix=True)
    from frozen_clip.backbone import FrozenCLIP

#: tap points that act on each token alone, hence can run on the flat sequence of the prefix and all suffixes
PER_TOKEN_POINTS = ("block_in", "attn_in", "mlp_hidden", "block_out")


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, L, D]`` -> ``[B, H, L, D / H]``."""
    b, length, width = x.shape
    return x.view(b, length, n_heads, width // n_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, d]`` -> ``[B, L, H d]``."""
    b, n_heads, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, n_heads * d)


def _attention(shapes: list[tuple[int, int]], a: torch.Tensor, site: TapSite, attn: nn.MultiheadAttention,
               mask: torch.Tensor) -> torch.Tensor:
    """Causal self-attention of ``[prefix; suffix_g]`` for every group g, the prefix computed once (batch 1); an
    ``attn`` tap once ``shapes`` is bound.

    ``a``: the attention input of every position of every part, flat ``[1, T, D]`` (prefix first, then each
    suffix group row by row); ``shapes``: (rows, positions) per part; ``mask``: the causal mask, already in
    ``a``'s dtype (block_forward casts it). The projections run once on all positions; only the attention itself
    runs per part."""
    n_prefix, h, width = shapes[0][1], attn.num_heads, a.shape[-1]
    qkv = F.linear(a, attn.in_proj_weight, attn.in_proj_bias)[0].split([n * t for n, t in shapes])
    q_p, k_p, v_p = qkv[0].view(1, n_prefix, 3 * width).chunk(3, dim=-1)
    outs = [F.scaled_dot_product_attention(_heads(q_p, h), _heads(k_p, h), _heads(v_p, h),
                                           attn_mask=mask[:n_prefix, :n_prefix])]
    for part, (n_cls, n_suffix) in zip(qkv[1:], shapes[1:]):
        q_s, k_s, v_s = part.view(n_cls, n_suffix, 3 * width).chunk(3, dim=-1)
        keys = torch.cat([k_p.expand(n_cls, -1, -1), k_s], dim=1)
        values = torch.cat([v_p.expand(n_cls, -1, -1), v_s], dim=1)
        outs.append(F.scaled_dot_product_attention(_heads(q_s, h), _heads(keys, h), _heads(values, h),
                                                   attn_mask=mask[n_prefix:n_prefix + n_suffix,
                                                                  :n_prefix + n_suffix]))
    merged = torch.cat([_merge(out).reshape(-1, width) for out in outs]).unsqueeze(0)
    return F.linear(merged, attn.out_proj.weight, attn.out_proj.bias)


def can_share(clip: FrozenCLIP) -> bool:
    """Whether the backbone's text tower is the plain causal ``ResidualAttentionBlock`` stack this module mirrors."""
    return tower_can_share(clip.text)


def tower_can_share(text: TextTower) -> bool:
    """:func:`can_share` for a :class:`~frozen_clip.towers.TextTower`."""
    from open_clip.transformer import ResidualAttentionBlock
    return text.supports_embedding_path() and all(
        isinstance(blk, ResidualAttentionBlock) and isinstance(blk.attn, nn.MultiheadAttention)
        and blk.attn._qkv_same_embed_dim and blk.attn.batch_first for blk in text.transformer.resblocks)


def taps_are_per_token(taps: Taps) -> bool:
    """Whether every text tap sits at a per-token point (:data:`PER_TOKEN_POINTS`): no ``tower_in``, no ``attn``."""
    return taps.points("text") <= set(PER_TOKEN_POINTS)


def common_prefix_length(ids: torch.Tensor) -> int:
    """Positions every row of ``ids`` ``[N, L]`` shares, capped at the first EOT (which must lie in a suffix)."""
    same = (ids == ids[:1]).all(dim=0).long()
    shared = int(same.cumprod(dim=0).sum())
    return min(shared, int(ids.argmax(dim=-1).min()))


def shared_prefix_hidden(text: TextTower, prefix: torch.Tensor, suffixes: list[torch.Tensor],
                         taps: Taps | None = None) -> list[torch.Tensor]:
    """Final hidden states (after ``ln_final``) of each suffix group ``[C_g, S_g, D]`` behind the shared ``prefix``.

    Args:
        prefix: the shared token embeddings ``[1, P, D]``.
        suffixes: per group, the token embeddings of the positions after the prefix.
        taps: text taps at per-token points only (:func:`taps_are_per_token`).
    """
    taps = taps or Taps()
    if not taps_are_per_token(taps):
        raise ValueError("a shared text prefix needs taps at per-token points only "
                         f"({', '.join(PER_TOKEN_POINTS)}); tower_in and attn taps see whole prompts")
    n_prefix = prefix.shape[1]
    length = n_prefix + max(s.shape[1] for s in suffixes)
    cast = text.transformer.get_cast_dtype()
    pos = text.positional_embedding[:length].to(cast)
    parts = [prefix.to(cast) + pos[:n_prefix]] + [s.to(cast) + pos[n_prefix:n_prefix + s.shape[1]] for s in suffixes]
    shapes = [(int(p.shape[0]), int(p.shape[1])) for p in parts]
    # one flat sequence of every position: per-token work runs in one call per layer, not once per part
    x = torch.cat([p.reshape(-1, text.width) for p in parts]).unsqueeze(0)
    blocks = text.transformer.resblocks
    per_part_attention = taps.copy().add("attn", "text", range(len(blocks)), partial(_attention, shapes))
    x = run_blocks(blocks, x, text.attn_mask[:length, :length], per_part_attention, "text", None, 0)
    flat = text.ln_final(x)[0].split([n * t for n, t in shapes])
    return [part.view(n, t, text.width) for part, (n, t) in zip(flat[1:], shapes[1:])]


def encode_text_shared_prefix(clip: FrozenCLIP, prefix: torch.Tensor, suffix: torch.Tensor,
                              ids: torch.Tensor, taps: Taps | None = None) -> torch.Tensor:
    """Text features ``[C, E]`` of the prompts ``[prefix; suffix_c]``.

    Args:
        prefix: the shared token embeddings ``[P, D]`` (or ``[1, P, D]``), e.g. SOS + CoOp's context.
        suffix: the per-class token embeddings ``[C, S, D]`` (class name, ".", EOS, padding).
        ids: the token ids ``[C, P + S]`` of the whole prompts (they locate the EOT, which must be in the suffix).
        taps: text taps at per-token points only.
    """
    prefix = prefix.unsqueeze(0) if prefix.dim() == 2 else prefix
    n_prefix = prefix.shape[1]
    eot = ids.argmax(dim=-1)
    if int(eot.min()) < n_prefix:
        raise ValueError(f"an EOT lies in the shared prefix (position {int(eot.min())} < {n_prefix})")
    (hidden,) = shared_prefix_hidden(clip.text, prefix, [suffix], taps)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eot - n_prefix]
    return clip.text.project(pooled)
