"""Verdicts for the demo's claims: per-seed paired differences and a paired bootstrap over images.

Every claim is a statistic of per-image counts (CHAIR_i = hallucinated / mentioned objects, recall =
true objects named / true objects), computed for two models on the *same* eval images of a seed, so
the difference is paired. The interval resamples images with replacement inside each seed (the same
draw for both models: that is the pairing), recomputes the statistic per seed and averages it over
seeds (each seed counts once, whatever its image count); its 2.5 / 97.5 percentiles are the 95 %
interval. The rule, fixed before any result was seen:

* **holds**: the interval lies entirely on the claimed side of the threshold;
* **fails**: it lies entirely on the other side;
* **unresolved**: it straddles the threshold (reported with the interval).

Training-curve claims (Fig. 6 analog) have no images; their interval resamples the logged training
steps of the first and last windows instead (stated in the claim).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

HOLDS, FAILS, UNRESOLVED = "holds", "fails", "unresolved"


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Ratio of sums along the last axis; 0 where the denominator is 0 (as ``chair_scores``)."""
    n, d = num.sum(-1).astype(float), den.sum(-1).astype(float)
    return np.divide(n, d, out=np.zeros_like(n), where=d > 0)


def chair_i(c: np.ndarray) -> np.ndarray:
    return _ratio(c[..., 0], c[..., 1])


def recall(c: np.ndarray) -> np.ndarray:
    return _ratio(c[..., 2], c[..., 3])


Stat = Callable[[dict[str, np.ndarray]], np.ndarray]


def paired_bootstrap(seeds: Sequence[dict[str, np.ndarray]], stat: Stat, *, n_boot: int = 2000,
                     seed: int = 0) -> dict:
    """Point value, per-seed values and 95 % interval of ``stat`` averaged over seeds.

    ``seeds``: one ``{model: counts [n_images, k]}`` per seed, rows aligned across models (same
    images). ``stat`` maps ``{model: counts [..., n_images, k]}`` to a value per leading index.
    """
    rng = np.random.default_rng(seed)
    per_seed, boots = [], []
    for data in seeds:
        n = len(next(iter(data.values())))
        if any(len(v) != n for v in data.values()):
            raise ValueError("paired bootstrap needs the same images for every model of a seed")
        per_seed.append(float(stat(data)))
        idx = rng.integers(0, n, size=(n_boot, n))  # one draw shared by all models: paired
        boots.append(stat({k: v[idx] for k, v in data.items()}))
    pooled = np.mean(boots, axis=0)
    lo, hi = np.percentile(pooled, [2.5, 97.5])
    return {"value": float(np.mean(per_seed)), "per_seed": per_seed, "ci": (float(lo), float(hi))}


def window_bootstrap(first: Sequence[Sequence[float]], last: Sequence[Sequence[float]], *, n_boot: int = 2000,
                     seed: int = 0) -> dict:
    """Change of a logged training metric, mean(last window) - mean(first window), pooled over seeds.

    Each seed's windows are resampled (steps with replacement, independently: they are different
    batches); the pooled value is the mean over seeds of the per-seed change.
    """
    rng = np.random.default_rng(seed)
    per_seed, boots = [], []
    for f, la in zip(first, last, strict=True):
        f, la = np.asarray(f, float), np.asarray(la, float)
        per_seed.append(float(la.mean() - f.mean()))
        boots.append(la[rng.integers(0, len(la), (n_boot, len(la)))].mean(1)
                     - f[rng.integers(0, len(f), (n_boot, len(f)))].mean(1))
    lo, hi = np.percentile(np.mean(boots, axis=0), [2.5, 97.5])
    return {"value": float(np.mean(per_seed)), "per_seed": per_seed, "ci": (float(lo), float(hi))}


def verdict(ci: tuple[float, float], direction: str, threshold: float = 0.0) -> str:
    """``direction`` ">" (the claim is stat > threshold) or "<"; the rule in the module docstring."""
    lo, hi = ci
    if direction not in (">", "<"):
        raise ValueError(f"direction must be '>' or '<', got {direction!r}")
    above, below = lo > threshold, hi < threshold
    if direction == ">":
        return HOLDS if above else FAILS if below else UNRESOLVED
    return HOLDS if below else FAILS if above else UNRESOLVED


def combine(verdicts: Sequence[str]) -> str:
    """A claim made of several parts holds when every part holds and fails when any part fails."""
    if any(v == FAILS for v in verdicts):
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else UNRESOLVED


def describe(name: str, res: dict, direction: str, threshold: float = 0.0, fmt: str = "{:+.3f}") -> str:
    """``name = v [lo, hi] (per seed a, b)`` with the claimed side, for reports."""
    lo, hi = res["ci"]
    seeds = ", ".join(fmt.format(x) for x in res["per_seed"])
    return (f"{name} = {fmt.format(res['value'])} [95% {fmt.format(lo)}, {fmt.format(hi)}] "
            f"(claimed {direction} {threshold:g}; per seed {seeds})")
