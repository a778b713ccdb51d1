"""SDPA split at the shared prompt: the packed layout's attention without computing what the mask throws away.

In the packed layout (:mod:`bpo.models.packed`, one example per row, rows right-padded) every row starts with
its prompt, and the first ``S = min(prompt lengths)`` queries of every row attend causally to the first ``S``
keys and nothing else. A dense-masked SDPA call still computes all ``T x T`` scores (the masked kernels skip no
block), so for LLaVA-1.5 (a ~600-token prompt before 1 + K responses of ~100) most of the attention work is on
the masked half of the prompt square. Here each layer makes two SDPA calls instead:

- queries ``[0, S)`` against keys ``[0, S)`` with ``is_causal=True`` and no mask: the flash kernels skip the
  blocks above the diagonal, on CPU and GPU alike;
- queries ``[S, T)`` against all keys with the dense mask's rows ``[S, T)``.

Their outputs, concatenated along the sequence, are what the one dense call gives (``tests/models`` check
values and gradients against it). Both calls go through transformers' own ``sdpa_attention_forward``, so GQA,
scaling and dtype handling stay transformers'.

How it is wired: transformers looks each layer's attention function up in ``ALL_ATTENTION_FUNCTIONS`` by the
config's implementation name. :func:`install` registers, under ``"sdpa"``, a wrapper that calls the original
function unchanged unless the call carries the keyword :data:`KWARG` (model forwards pass unknown keywords down
to the attention functions) *and* its mask is the very tensor that keyword names. Only the packed path passes
it; the vision tower, which gets the same keywords but its own mask, and every other model in the process see
plain SDPA. The full dense mask is always passed as well, so if another library replaces ``"sdpa"`` after us
the results stay exact and only the saving is lost.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

KWARG = "bpo_prefix_split"


@dataclass(frozen=True)
class PrefixSplit:
    """Where a packed batch's rows can be split, and the mask rows of the second part."""

    split: int  # S: every row's first S tokens are its prompt's
    mask: torch.Tensor  # the full [N, 1, T, T] mask the model is given (identity is the guard)
    tail_mask: torch.Tensor  # mask[:, :, S:, :], contiguous, built once per step


def prefix_split(mask: torch.Tensor, split: int, *, min_split: int = 16) -> PrefixSplit | None:
    """A :class:`PrefixSplit` for ``mask``, or None where a split would not pay (a short shared prompt)."""
    t = mask.shape[-1]
    if split < min_split or split >= t or mask.dim() != 4 or mask.shape[-2] != t:
        return None
    return PrefixSplit(split, mask, mask[:, :, split:, :].contiguous())


def _wrapper(original):
    def prefix_sdpa(module, query, key, value, attention_mask, *args, **kwargs):
        split = kwargs.pop(KWARG, None)
        t = query.shape[2]
        if (split is None or attention_mask is not split.mask or key.shape[2] != t or t != split.mask.shape[-1]
                or not getattr(module, "is_causal", True) or kwargs.get("is_causal") is False
                or kwargs.get("position_bias") is not None or args):
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        kwargs.pop("is_causal", None)
        s = split.split
        # split(), not slicing: the backward of a slice writes its gradient into a zero tensor of the whole
        # input, one per slice; that of split() is one concatenation
        q_head, q_tail = query.split([s, t - s], dim=2)
        k_head, v_head = key.split([s, t - s], dim=2)[0], value.split([s, t - s], dim=2)[0]
        head, _ = original(module, q_head, k_head, v_head, None, is_causal=True, **kwargs)
        tail, _ = original(module, q_tail, key, value, split.tail_mask, is_causal=False, **kwargs)
        return torch.cat([head, tail], dim=1), None  # outputs are [N, T, heads, dim]

    prefix_sdpa.bpo_original = original
    return prefix_sdpa


@functools.cache
def install() -> bool:
    """Register the wrapper under ``"sdpa"`` (once per process). False where transformers has no such hook."""
    try:
        from transformers.modeling_utils import AttentionInterface
    except ImportError:  # pragma: no cover - transformers without the attention registry
        return False
    original = AttentionInterface._global_mapping.get("sdpa")
    if original is None:  # pragma: no cover
        return False
    if not hasattr(original, "bpo_original"):
        AttentionInterface.register("sdpa", _wrapper(original))
    return True
