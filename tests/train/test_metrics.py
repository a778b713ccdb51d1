"""Per-step statistics: exact means overall and per negative source, read back lazily."""

import math

import torch

from bpo.train.data import negative_matrix
from bpo.train.metrics import StepStats


def test_preference_stats_per_source_by_hand():
    # Two examples; example 0 has negatives (weakened, blind), example 1 only (weakened) + a padded slot.
    chosen_r = torch.tensor([1.0, 0.5])
    rejected_r = torch.tensor([[0.0, 2.0], [0.25, 9.0]])
    valid = torch.tensor([[True, True], [True, False]])
    stats = StepStats()
    stats.add_preference(chosen_r, rejected_r, valid, [["weakened", "blind"], ["weakened"]],
                         torch.tensor([-3.0, -5.0]), torch.tensor([[-4.0, -6.0], [-7.0, 0.0]]))
    stats.add("loss", torch.tensor([0.5]))
    stats.add("loss", torch.tensor([1.5]))
    m = stats.means()
    # margins of the valid pairs: 1-0 = 1, 1-2 = -1, 0.5-0.25 = 0.25 (the padded 9.0 is ignored)
    assert math.isclose(m["rewards/margins"], (1 - 1 + 0.25) / 3)
    assert math.isclose(m["rewards/accuracies"], 2 / 3)
    assert math.isclose(m["rewards/margins/weakened"], (1 + 0.25) / 2) and m["rewards/margins/blind"] == -1
    assert m["rewards/accuracies/blind"] == 0 and m["rewards/accuracies/weakened"] == 1
    assert math.isclose(m["logps/rejected"], (-4 - 6 - 7) / 3) and m["logps/chosen"] == -4
    assert m["loss"] == 1.0 and stats.counts["rewards/rejected"] == 3
    # read back once: a second call gives the same numbers and adds nothing
    assert stats.means() == m


def test_stats_merge_sums_and_counts_not_means():
    a, b = StepStats(), StepStats()
    a.add("loss", torch.tensor([1.0, 2.0, 3.0]))
    b.add("loss", torch.tensor([10.0]))
    merged = a.merged(lambda objs: objs + [(dict(b.sums), dict(b.counts))])
    assert merged.means()["loss"] == 4.0  # (1+2+3+10)/4, not (2+10)/2


def test_negative_matrix_pads_weights():
    class Ex:
        def __init__(self, weights, sources):
            self.weights, self.sources = weights, sources

    w, src = negative_matrix([Ex([1.0, 0.5], ["chosen", "human", "blind"]), Ex([2.0], ["chosen", "human"])], 3)
    assert w.tolist() == [[1.0, 0.5], [2.0, 0.0]] and w.dtype == torch.float32
    assert src == [["human", "blind"], ["human"]]
