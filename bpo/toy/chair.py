"""CHAIR scoring in the toy world (Rohrbach et al. 2018), exact because captions follow one grammar.

* :func:`mentioned_objects`: the ``colour shape`` pairs a text names (grammar-free, once each, as
  :mod:`bpo.eval.chair` counts);
* :func:`chair_scores`: CHAIR_i / CHAIR_s, parse rate, recall and the *partner share* of a set of captions;
* :func:`image_counts`: the same counts per image, the input of the paired bootstrap (:mod:`bpo.toy.verdicts`).

Pure functions of text and ground truth: no model, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bpo.toy.world import parse_caption


def mentioned_objects(text: str, kinds: Sequence[str]) -> list[str]:
    """Objects named in ``text`` (adjacent ``colour shape`` words that form a kind), once each, in order.

    Grammar-free on purpose, like CHAIR: an unparsable caption still mentions objects.
    """
    kinds = set(kinds)
    words = text.replace(".", " . ").split()
    found = [f"{a} {b}" for a, b in zip(words, words[1:]) if f"{a} {b}" in kinds]
    return list(dict.fromkeys(found))


def chair_scores(captions: Sequence[str], truths: Sequence[Sequence[str]], kinds: Sequence[str],
                 partner: dict[str, str] | None = None) -> dict:
    """CHAIR_i = hallucinated / mentioned objects, CHAIR_s = captions with >= 1 hallucination / all.

    Also: ``parse_rate`` (captions in the world grammar), ``recall`` (true objects mentioned / all
    true objects), ``objects_per_caption`` and, with ``partner``, ``partner_share`` (hallucinated
    objects that are the partner of an earlier-mentioned object / all hallucinated). Ratios with a
    zero denominator are reported as 0.0 (and the counts are returned so callers can tell).
    """
    n_ment = n_hall = n_hall_caps = n_parsed = n_true = n_hit = n_partner = 0
    for cap, truth in zip(captions, truths, strict=True):
        truth = set(truth)
        ment = mentioned_objects(cap, kinds)
        hall = [m for m in ment if m not in truth]
        n_ment += len(ment)
        n_hall += len(hall)
        n_hall_caps += bool(hall)
        n_parsed += parse_caption(cap, set(kinds)) is not None
        n_true += len(truth)
        n_hit += len(truth & set(ment))
        if partner:
            for j, m in enumerate(ment):
                if m in hall and any(partner.get(p) == m for p in ment[:j]):
                    n_partner += 1
    n = max(1, len(captions))
    return {"chair_i": n_hall / n_ment if n_ment else 0.0, "chair_s": n_hall_caps / n,
            "parse_rate": n_parsed / n, "recall": n_hit / n_true if n_true else 0.0,
            "objects_per_caption": n_ment / n, "partner_share": n_partner / n_hall if n_hall else 0.0,
            "n_captions": len(captions), "n_mentioned": n_ment, "n_hallucinated": n_hall}


def image_counts(responses: dict[str, str], truths: dict[str, Sequence[str]], kinds: Sequence[str]) -> np.ndarray:
    """``[n_images, 4]`` int array (hallucinated, mentioned, hits, true) in ``truths`` order.

    A missing response counts as an empty caption (nothing mentioned, nothing recalled).
    """
    rows = []
    for rid, truth in truths.items():
        ment = mentioned_objects(responses.get(rid, ""), kinds)
        truth = set(truth)
        rows.append((sum(m not in truth for m in ment), len(ment), len(truth & set(ment)), len(truth)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)
