"""pi_ref, the reference policy of DPO-style losses: one object the trainer asks for log-probs.

Three kinds, chosen in one place (:func:`reference_kind`, :func:`build_reference`) from the config:

- :class:`DisabledAdapter` (LoRA): the policy network with its adapters switched off (peft
  ``disable_adapter``), so no second copy of the weights. A projector trained through ``modules_to_save``
  keeps its original module for this pass (see :mod:`bpo.train.modeling`). With ``loss.reference=start``
  it is the policy itself as training starts, which is only pi_ref before the first optimizer step: that is
  why ``validate()`` requires the cache for it.
- :class:`FrozenCopy` (full fine-tuning): a frozen copy of the start weights, placed the way the engine
  needs it (:func:`bpo.train.engines.prepare_reference`: a replica, or sharded like the policy).
- :class:`CachedReference` (``run.ref_cache=auto``, the default): the values of one of those two, computed
  once into the on-disk cache of :mod:`bpo.train.ref_cache` before training; the network is released once
  every value is on disk (the frozen copy of full fine-tuning is dead weight from then on).

A loss that reads no pi_ref (``needs_reference`` false, i.e. SFT) gets no reference at all.

Everything a reference needs comes in as arguments (the config, the unwrapped policy or the frozen copy, the
trainer's log-prob function ``score(model, examples) -> (logps, counts, valid)``, the examples and the
``Accelerator``), so nothing here reads the trainer.
"""

from __future__ import annotations

import contextlib

import torch

from bpo.train import ref_cache
from bpo.train.losses import needs_reference
from bpo.train.modeling import reference_mode

DISABLED_ADAPTER = "disabled adapter"
FROZEN_COPY = "frozen copy"


class Reference:
    """``logps(examples) -> [B, 1 + Kmax]`` summed reference log-probs (0 where an example has fewer responses).

    Keyword arguments go to the trainer's log-prob path unchanged (e.g. inputs a step shares between its policy
    and reference passes); the cache ignores them."""

    kind = ""
    cache: ref_cache.ReferenceCache | None = None  # set by the cached kind
    frozen_copy = None  # the frozen network of full fine-tuning, while one is held

    def logps(self, examples, **score_kwargs) -> torch.Tensor:
        raise NotImplementedError


def _forward(network_ctx, score, examples, score_kwargs) -> torch.Tensor:
    """One no-grad reference pass in eval mode (dropout off), the network's mode restored afterwards."""
    from bpo.models.switches import eval_mode

    with torch.no_grad(), network_ctx as ref:
        with eval_mode(ref):  # each module's own mode back afterwards, without a walk of train()
            lp, _, _ = score(ref, examples, **score_kwargs)
    return lp


class DisabledAdapter(Reference):
    """LoRA: the policy with its adapters off (or, with ``start``, as it is: the start adapter is pi_ref)."""

    kind = DISABLED_ADAPTER

    def __init__(self, policy, score, *, start: bool = False):
        self.policy, self.score, self.start = policy, score, start

    def logps(self, examples, **score_kwargs) -> torch.Tensor:
        return _forward(reference_mode(self.policy, start=self.start), self.score, examples, score_kwargs)


class FrozenCopy(Reference):
    """Full fine-tuning: a frozen copy of the start weights (which is also pi_ref for ``loss.reference=start``)."""

    kind = FROZEN_COPY

    def __init__(self, model, score):
        self.frozen_copy, self.score = model, score

    def logps(self, examples, **score_kwargs) -> torch.Tensor:
        return _forward(contextlib.nullcontext(self.frozen_copy), self.score, examples, score_kwargs)


class CachedReference(Reference):
    """Every value on disk, looked up by each example's content key; no reference forward during training."""

    def __init__(self, cache: ref_cache.ReferenceCache, of: str, device=None):
        self.cache, self.device = cache, device
        self.kind = f"disk cache ({of})"

    def logps(self, examples, **_) -> torch.Tensor:
        return self.cache.lookup(examples, device=self.device)


def reference_kind(cfg) -> str | None:
    """The network that computes pi_ref for ``cfg``: None (the loss reads none), disabled adapter, or frozen copy.

    The trainer asks this before loading the model, to know whether a frozen copy must be made."""
    if not needs_reference(cfg.loss.type):
        return None
    return DISABLED_ADAPTER if cfg.lora.enabled else FROZEN_COPY


def _under_autocast(score, acc):
    """``score`` under the run's autocast, as the policy pass runs (and as TRL computes pi_ref): both passes then do
    the same arithmetic, and the image features of the policy pass serve the reference pass too
    (:mod:`bpo.models.vision_share` keys them by autocast state). The cache's pre-pass goes through it as well."""
    def scored(model, examples, **kwargs):
        with acc.autocast():
            return score(model, examples, **kwargs)

    return scored


def build_reference(cfg, *, policy, frozen_copy, score, examples, processor, acc, sharded: bool = False,
                    log=print) -> Reference | None:
    """The reference of this run, its cache filled (``run.ref_cache=auto``) before the first optimizer step.

    ``policy``: the unwrapped policy (adapters off for the reference; its identity keys the cache);
    ``frozen_copy``: the prepared frozen copy of full fine-tuning (None under LoRA); ``score``: the trainer's
    log-prob path; ``sharded``: the reference forward is collective (every rank runs as many batches).
    """
    kind = reference_kind(cfg)
    if kind is None:
        return None
    score = _under_autocast(score, acc)
    if kind == DISABLED_ADAPTER:
        network: Reference = DisabledAdapter(policy, score, start=cfg.loss.reference == "start")
    else:
        network = FrozenCopy(frozen_copy, score)
    if cfg.run.ref_cache == "off":
        return network
    # called through the module, so a bench can time the pre-pass and a test can interrupt it
    cache = ref_cache.build_reference_cache(cfg, processor, policy, examples, network.logps, acc, sharded=sharded,
                                            log=log)
    if network.frozen_copy is not None:
        log("reference cache complete: freed the frozen reference copy")
    return CachedReference(cache, kind, device=acc.device)
