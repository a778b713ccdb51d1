"""Training data: records -> encoded examples, subset draws, and the deterministic batch schedule.

The order of an epoch is a pure function of (seed, epoch, number of examples), so a resumed run
skips to the exact micro-batch where it stopped.
"""

from __future__ import annotations

import random

import torch

from bpo.errors import BpoError
from bpo.models.logprobs import to_device


def select_negatives(records, sources: list[str], max_negatives: int):
    """Keep only negatives of the given sources (and at most ``max_negatives``); drop emptied records."""
    out = []
    for rec in records:
        negs = [n for n in rec.rejected if not sources or n.source in sources]
        if max_negatives > 0:
            negs = negs[:max_negatives]
        if negs or not rec.rejected:
            rec.rejected = negs
            out.append(rec)
    return out


def subset(records: list, fraction: float, seed: int) -> list:
    """A fixed-seed random subset (same seed -> nested subsets as the fraction grows)."""
    if fraction >= 1.0:
        return records
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n = max(1, round(len(records) * fraction))
    keep = sorted(order[:n])
    return [records[i] for i in keep]


def epoch_batches(lengths: list[int], batch_size: int, *, seed: int, epoch: int, group_by_length: bool,
                  world_size: int = 1) -> list[list[int]]:
    """Micro-batches (lists of example indices) for one epoch.

    With ``group_by_length`` the shuffled order is cut into mega-batches of 50 micro-batches, each
    sorted by length, so a batch holds examples of similar size (less padding) while the order of
    batches stays random. With several processes, batches are dealt round-robin and the tail that
    cannot be split evenly is dropped (every rank must run the same number of steps).
    """
    n = len(lengths)
    if n == 0:
        raise BpoError("no training examples left after filtering; see the dropped-record report")
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if group_by_length:
        mega = batch_size * 50
        order = [i for s in range(0, n, mega) for i in sorted(order[s:s + mega], key=lambda j: -lengths[j])]
    batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    if group_by_length:
        perm = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[i] for i in perm]
    if world_size > 1:
        batches = batches[: len(batches) - len(batches) % world_size]
    return batches


def negative_matrix(examples, width: int, device=None):
    """Per-example negative weights ``[B, width-1]`` and source names, padded.

    Built on the CPU and moved in one copy (a small copy per example would each wait on the GPU).
    """
    rows = [list(ex.weights) + [0.0] * (max(width - 1, 1) - len(ex.weights)) for ex in examples]
    weights = torch.tensor(rows, dtype=torch.float32)
    if device is not None:
        weights = to_device(weights, device)
    return weights, [ex.sources[1:] for ex in examples]
