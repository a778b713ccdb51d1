"""Losses against numbers computed by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from bpo.train.losses import (
    LOSSES,
    multi_negative_hinge_loss,
    multi_negative_ipo_loss,
    multi_negative_sigmoid_loss,
    nll_loss,
)


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_sigmoid_dpo_hand_computed():
    """One example, one negative.

    policy chosen -10, ref chosen -12  -> chosen ratio  +2
    policy rej    -15, ref rej    -14  -> rejected ratio -1
    h = 2 - (-1) = 3; beta = 0.1 -> logits 0.3
    loss = -log sigmoid(0.3) = log(1 + e^-0.3) = 0.554355244...
    rewards: chosen 0.1 * 2 = 0.2, rejected 0.1 * -1 = -0.1
    """
    out = multi_negative_sigmoid_loss(t([-10.0]), t([[-15.0]]), t([-12.0]), t([[-14.0]]), beta=0.1)
    assert_close(out.losses, t([math.log1p(math.exp(-0.3))]))
    assert abs(out.losses.item() - 0.5543552444685271) < 1e-12
    assert_close(out.chosen_rewards, t([0.2]))
    assert_close(out.rejected_rewards, t([[-0.1]]))


def test_multi_negative_sum_mean_weights_and_padding():
    """Chosen ratio 0 (policy = ref = -5). Negatives: ratios -10 and +10 -> h = 10, -10; beta 0.1 -> logits 1, -1.

    l1 = log(1+e^-1) = 0.313261687518, l2 = log(1+e^1) = 1.313261687518
    sum = 1.626523375036, mean = 0.813261687518
    weights (2, 1): sum = 2*0.313261687518 + 1.313261687518 = 1.939785062554, weighted mean = 1.939785.../3
    Example 2 has only one valid negative (second column padded): its loss is l1 alone in every reduction.
    """
    pc, rc = t([-5.0, -5.0]), t([-5.0, -5.0])
    pr = t([[-10.0, 10.0], [-10.0, 123.0]])
    rr = t([[0.0, 0.0], [0.0, 0.0]])
    valid = torch.tensor([[True, True], [True, False]])
    l1, l2 = math.log1p(math.exp(-1)), math.log1p(math.exp(1))
    out = multi_negative_sigmoid_loss(pc, pr, rc, rr, beta=0.1, valid=valid, reduction="sum")
    assert_close(out.losses, t([l1 + l2, l1]))
    out = multi_negative_sigmoid_loss(pc, pr, rc, rr, beta=0.1, valid=valid, reduction="mean")
    assert_close(out.losses, t([(l1 + l2) / 2, l1]))
    w = t([[2.0, 1.0], [2.0, 1.0]])
    out = multi_negative_sigmoid_loss(pc, pr, rc, rr, beta=0.1, valid=valid, weights=w, reduction="sum")
    assert_close(out.losses, t([2 * l1 + l2, 2 * l1]))
    out = multi_negative_sigmoid_loss(pc, pr, rc, rr, beta=0.1, valid=valid, weights=w, reduction="mean")
    assert_close(out.losses, t([(2 * l1 + l2) / 3, l1]))


def test_k1_equals_dpo_formula():
    g = torch.Generator().manual_seed(0)
    pc, rc = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    pr, rr = torch.randn(6, 1, generator=g, dtype=torch.float64), torch.randn(6, 1, generator=g, dtype=torch.float64)
    beta = 0.3
    dpo = -torch.nn.functional.logsigmoid(beta * ((pc - rc) - (pr[:, 0] - rr[:, 0])))
    for reduction in ("sum", "mean"):
        out = multi_negative_sigmoid_loss(pc, pr, rc, rr, beta=beta, reduction=reduction)
        assert_close(out.losses, dpo)


def test_blind_po_is_sum_of_two_dpo_terms():
    """Blind PO (K=2: human rejected + blind) equals the sum of two independent DPO losses."""
    pc, rc = t([-3.0]), t([-4.0])
    pr, rr = t([[-6.0, -2.0]]), t([[-5.0, -2.5]])
    out = multi_negative_sigmoid_loss(pc, pr, rc, rr, beta=0.5)
    a = multi_negative_sigmoid_loss(pc, pr[:, :1], rc, rr[:, :1], beta=0.5).losses
    b = multi_negative_sigmoid_loss(pc, pr[:, 1:], rc, rr[:, 1:], beta=0.5).losses
    assert_close(out.losses, a + b)


def test_label_smoothing():
    """logits 0.3, eps 0.1: 0.9*log(1+e^-0.3) + 0.1*log(1+e^0.3) = 0.9*0.554355 + 0.1*0.854355 = 0.584355"""
    out = multi_negative_sigmoid_loss(t([-10.0]), t([[-15.0]]), t([-12.0]), t([[-14.0]]), beta=0.1,
                                      label_smoothing=0.1)
    expected = 0.9 * math.log1p(math.exp(-0.3)) + 0.1 * math.log1p(math.exp(0.3))
    assert_close(out.losses, t([expected]))
    assert abs(expected - 0.5843552444685271) < 1e-9


def test_ipo_and_hinge_hand_computed():
    """h = 3 (as above). IPO with tau 0.25: (3 - 1/(2*0.25))^2 = (3 - 2)^2 = 1.
    Hinge with beta 0.1: relu(1 - 0.3) = 0.7; with beta 1: relu(1 - 3) = 0."""
    args = (t([-10.0]), t([[-15.0]]), t([-12.0]), t([[-14.0]]))
    assert_close(multi_negative_ipo_loss(*args, beta=0.25).losses, t([1.0]))
    assert_close(multi_negative_hinge_loss(*args, beta=0.1).losses, t([0.7]))
    assert_close(multi_negative_hinge_loss(*args, beta=1.0).losses, t([0.0]))


def test_nll_per_token():
    """-(-12)/4 = 3 and -(-5)/1 = 5; zero token counts are clamped (no division by zero)."""
    assert_close(nll_loss(t([-12.0, -5.0, 0.0]), torch.tensor([4, 1, 0])), t([3.0, 5.0, 0.0]))


def test_gradient_direction():
    """DPO raises chosen and lowers rejected log-probs: d loss / d pc < 0 < d loss / d pr."""
    pc = t([-10.0]).requires_grad_()
    pr = t([[-15.0]]).requires_grad_()
    multi_negative_sigmoid_loss(pc, pr, t([-12.0]), t([[-14.0]]), beta=0.1).losses.sum().backward()
    s = 1 / (1 + math.exp(0.3))  # sigmoid(-0.3)
    assert_close(pc.grad, t([-0.1 * s]))
    assert_close(pr.grad, t([[0.1 * s]]))


def test_registry_and_bad_reduction():
    assert set(LOSSES.names()) >= {"sigmoid", "ipo", "hinge"}
    from bpo.errors import BpoError

    with pytest.raises(BpoError, match="did you mean 'sigmoid'"):
        LOSSES.get("sigmod")
    with pytest.raises(ValueError):
        multi_negative_sigmoid_loss(t([0.0]), t([[0.0]]), t([0.0]), t([[0.0]]), reduction="max")
