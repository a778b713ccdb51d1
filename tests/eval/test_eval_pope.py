"""POPE answer parsing and metrics against a hand-computed confusion matrix."""

import pytest

from bpo.errors import RecordError
from bpo.eval.pope import evaluate_pope, parse_yes_no, pope_metrics, pope_truth


@pytest.mark.parametrize("text, expected", [
    ("Yes.", "yes"), ("yes, there is a dog", "yes"), ("**Yes**, a dog.", "yes"), ("YES", "yes"),
    ("No, there isn't a dog.", "no"), ("NO", "no"), ("Nope.", "no"), ("Answer: No", "no"),
    ("There is a dog on the bench.", "yes"), ("There are two dogs.", "yes"), ("I can see a dog.", "yes"),
    ("The answer is yes.", "yes"), ("Notably, yes.", "yes"),
    ("There is no dog.", "no"), ("I don't see any dog.", "no"), ("There isn\u2019t one.", "no"),
    ("I'm not sure.", "unknown"), ("It is unclear whether there is a dog.", "unknown"), ("Maybe.", "unknown"),
    ("Yes and no.", "unknown"), ("The image shows a cat.", "unknown"), ("", "unknown"), ("...", "unknown"),
    ("Yes. No dog is visible though.", "yes"),  # only the first sentence counts
])
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


ITEMS = [  # (id, response, label, split) -> parsed prediction in the comment
    ("1", "Yes.", "yes", "random"),                             # yes  TP
    ("2", "There is a dog.", "yes", "adversarial"),             # yes  TP
    ("3", "No.", "yes", "random"),                              # no   FN
    ("4", "I'm not sure.", "yes", "adversarial"),               # unknown (label yes)
    ("5", "No, there isn't.", "no", "random"),                  # no   TN
    ("6", "There is no cat.", "no", "adversarial"),             # no   TN
    ("7", "Yes, I see one.", "no", "random"),                   # yes  FP
    ("8", "The image shows a bench.", "no", "adversarial"),     # unknown (label no)
    ("9", "Nope.", "no", "random"),                             # no   TN
    ("10", "yes", "yes", "adversarial"),                        # yes  TP
]


def test_pope_confusion_matrix_by_hand():
    """TP=3 (1,2,10), FP=1 (7), TN=3 (5,6,9), FN=1 (3), unknown=2 (4 label yes, 8 label no), N=10.

    accuracy  = (3+3)/10 = 0.6          (unknowns are wrong)
    precision = 3/(3+1) = 0.75
    recall    = 3/#label-yes = 3/5 = 0.6 (item 4, unknown, is a miss)
    f1        = 2*0.75*0.6/(0.75+0.6) = 2/3
    yes_ratio = predicted yes / N = 4/10 (the label yes-ratio would be 5/10: lmms-eval's bug)
    random (1,3,5,7,9): TP1 FP1 TN2 FN1 -> acc 3/5, P 1/2, R 1/2, F1 1/2, yes 2/5
    adversarial (2,4,6,8,10): TP2 TN1, unknown 2 -> acc 3/5, P 2/2, R 2/3, F1 0.8, yes 2/5
    """
    metrics, details = evaluate_pope(ITEMS)
    assert [d["pred"] for d in details] == ["yes", "yes", "no", "unknown", "no", "no", "yes", "unknown", "no", "yes"]
    assert metrics["confusion"] == {"tp": 3, "fp": 1, "tn": 3, "fn": 1, "unknown_label_yes": 1, "unknown_label_no": 1}
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["precision"] == pytest.approx(0.75)
    assert metrics["recall"] == pytest.approx(0.6)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["yes_ratio"] == pytest.approx(0.4)
    assert (metrics["unknown"], metrics["unknown_ratio"], metrics["n"]) == (2, 0.2, 10)
    rnd, adv = metrics["per_split"]["random"], metrics["per_split"]["adversarial"]
    assert (rnd["accuracy"], rnd["precision"], rnd["recall"], rnd["f1"], rnd["yes_ratio"]) == pytest.approx(
        (0.6, 0.5, 0.5, 0.5, 0.4))
    assert (adv["accuracy"], adv["precision"], adv["recall"], adv["f1"], adv["yes_ratio"]) == pytest.approx(
        (0.6, 1.0, 2 / 3, 0.8, 0.4))
    assert adv["unknown"] == 2 and rnd["unknown"] == 0


def test_undefined_precision_and_no_splits():
    metrics, _ = evaluate_pope([("a", "No.", "yes", None), ("b", "No.", "no", None)])
    assert metrics["precision"] is None and metrics["f1"] is None and metrics["recall"] == 0.0
    assert "per_split" not in metrics
    assert pope_metrics(["yes"], ["no"])["f1"] is None  # no positive labels: recall undefined


def test_pope_truth_validates_labels():
    assert pope_truth({"meta": {"label": " Yes ", "split": "popular"}}, "r", "f:1") == ("yes", "popular")
    with pytest.raises(RecordError, match=r"f:3: record 'r': POPE needs meta.label"):
        pope_truth({"meta": {"label": "maybe"}}, "r", "f:3")
