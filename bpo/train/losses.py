"""Preference losses as small pure functions on named log-prob tensors.

Shapes: ``B`` examples, each with one chosen response and up to ``K`` rejected ones.

- ``policy_chosen``, ``ref_chosen``: ``[B]`` summed log-probs log pi(y_w|x), log pi_ref(y_w|x)
- ``policy_rejected``, ``ref_rejected``: ``[B, K]``
- ``valid``: ``[B, K]`` bool, False where an example has fewer than K negatives
- ``weights``: ``[B, K]`` per-negative weights (per-source weights looked up by the caller)

Each loss returns a :class:`LossOutput` with *per-example* losses (unreduced) and implicit rewards
``r = beta * (log pi - log pi_ref)``, so the trainer logs margins and accuracies per negative source.
Every loss is registered in :data:`LOSSES` under its ``loss.type``; a loss that reads no pi_ref (SFT) says so
with ``needs_reference = False`` (see :func:`needs_reference`), and the trainer then builds no reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bpo.registry import Registry

LOSSES = Registry("loss")


@dataclass
class LossOutput:
    losses: torch.Tensor  # [B]
    chosen_rewards: torch.Tensor | None  # [B]; None for a loss without a reference (no implicit reward)
    rejected_rewards: torch.Tensor | None  # [B, K]


def _pair_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    """h_k = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_k) - log pi_ref(y_k)), shape [B, K]."""
    chosen_ratio = (policy_chosen - ref_chosen).unsqueeze(-1)
    rejected_ratio = policy_rejected - ref_rejected
    return chosen_ratio - rejected_ratio


def _reduce_negatives(pair_losses, valid, weights, reduction: str):
    w = weights * valid.to(pair_losses.dtype)
    total = (pair_losses * w).sum(-1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / w.sum(-1).clamp_min(1e-12)
    raise ValueError(f"reduction must be 'sum' or 'mean', not {reduction!r}")


def _defaults(policy_rejected, valid, weights):
    if valid is None:
        valid = torch.ones_like(policy_rejected, dtype=torch.bool)
    if weights is None:
        weights = torch.ones_like(policy_rejected)
    return valid, weights


def _rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    return (beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach())


@LOSSES.register("sigmoid")
def multi_negative_sigmoid_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1,
                                valid=None, weights=None, reduction: str = "sum",
                                label_smoothing: float = 0.0, **_) -> LossOutput:
    r"""DPO / multi-negative BPO loss.

    Bootstrapped-PO (Pi et al., 2024, eq. 4, https://arxiv.org/abs/2403.08730) trains plain DPO
    (Rafailov et al., 2023, https://arxiv.org/abs/2305.18290) on (chosen, negative) pairs:

        L = -log sigma(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])

    With K negatives per example we sum (or average) over k, with optional weights w_k:

        L = sum_k w_k * -log sigma(beta * h_k)

    Blind-PO (Li et al., 2025, https://arxiv.org/abs/2503.14189) is this with K = 2 (the human
    rejected and the blind response), weight 1 each, both scored with the image present. Its public
    code realises it by duplicating pairs instead; same objective in expectation, up to a factor 2.
    With K = 1 this is exactly DPO. ``label_smoothing`` is the conservative-DPO epsilon.
    """
    valid, weights = _defaults(policy_rejected, valid, weights)
    logits = beta * _pair_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    pair = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    losses = _reduce_negatives(pair, valid, weights, reduction)
    return LossOutput(losses, *_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected))


@LOSSES.register("ipo")
def multi_negative_ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1,
                            valid=None, weights=None, reduction: str = "sum", **_) -> LossOutput:
    r"""IPO (Azar et al., 2023, https://arxiv.org/abs/2310.12036, eq. 17): (h - 1/(2 beta))^2 per pair.

    Here ``beta`` is IPO's tau. Like TRL we use summed (not length-averaged) log-probs; the paper
    averages per token, so scale beta accordingly for long responses.
    """
    valid, weights = _defaults(policy_rejected, valid, weights)
    h = _pair_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    pair = (h - 1.0 / (2.0 * beta)) ** 2
    losses = _reduce_negatives(pair, valid, weights, reduction)
    return LossOutput(losses, *_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected))


@LOSSES.register("hinge")
def multi_negative_hinge_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float = 0.1,
                              valid=None, weights=None, reduction: str = "sum", **_) -> LossOutput:
    r"""Hinge / SLiC-style loss (Zhao et al., 2023, https://arxiv.org/abs/2305.10425): relu(1 - beta * h)."""
    valid, weights = _defaults(policy_rejected, valid, weights)
    h = _pair_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    pair = torch.relu(1.0 - beta * h)
    losses = _reduce_negatives(pair, valid, weights, reduction)
    return LossOutput(losses, *_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def nll_loss(policy_chosen: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the chosen response, ``[B]``.

    Used alone for the SFT baseline (paper Table 4) and as an optional term beside DPO
    (``sft_weight``), which keeps small models from collapsing the tokens that chosen and rejected
    share (cf. RPO, Pang et al., 2024, https://arxiv.org/abs/2404.19733).
    """
    return -policy_chosen / chosen_tokens.clamp_min(1).to(policy_chosen.dtype)


@LOSSES.register("sft")
def sft_loss(policy_chosen, policy_rejected=None, ref_chosen=None, ref_rejected=None, *, chosen_tokens,
             **_) -> LossOutput:
    """The SFT baseline (paper Table 4): per-token NLL of the chosen response alone (:func:`nll_loss`).

    It reads neither a reference nor the rejected responses, so it has no implicit rewards.
    """
    return LossOutput(nll_loss(policy_chosen, chosen_tokens), None, None)


sft_loss.needs_reference = False


def needs_reference(loss_type: str) -> bool:
    """Whether ``loss.type`` reads pi_ref log-probs (and so rejected responses). The trainer and the reference
    factory both ask this; a loss registered without saying otherwise is a preference loss."""
    return getattr(LOSSES.get(loss_type), "needs_reference", True)
