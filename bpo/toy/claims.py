"""The Bootstrapped-PO paper's claims, decided on the demo's numbers with the rules of :mod:`bpo.toy.verdicts`.

(a) once (the base model); (b)-(e) for each training recipe (``reg``: DPO + NLL; ``paper``: plain
DPO). Every claim carries its statistic, the per-seed values, the 95 % pooled paired-bootstrap
interval and a verdict: holds / fails / unresolved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bpo.toy import verdicts as V
from bpo.train.metrics import read_metrics

CUT = 0.30  # (b): relative CHAIR_i cut the paper's headline reaches (Table 1 analog)
RECALL_KEEP = 0.90  # (b): recall may not fall below 90 % of the base (not "say less to hallucinate less")


def _counts(sr: dict, name: str) -> np.ndarray | None:
    res = sr["results"].get(name)
    return None if res is None or "counts" not in res else np.asarray(res["counts"], dtype=np.int64)


def _seeds(seed_results: list[dict], names: dict[str, str]) -> list[dict] | None:
    """Per seed ``{alias: counts}`` for the models in ``names`` (alias -> variant), or None if any is missing."""
    out = []
    for sr in seed_results:
        data = {alias: _counts(sr, name) for alias, name in names.items()}
        if any(v is None for v in data.values()):
            return None
        out.append(data)
    return out


def _claim(text: str, recipe: str | None, parts: list[tuple[str, dict, str, float, str]]) -> dict:
    """``parts``: (name, bootstrap result, direction, threshold, number format)."""
    vs = [V.verdict(res["ci"], d, thr) for _, res, d, thr, _ in parts]
    return {"claim": text, "recipe": recipe, "verdict": V.combine(vs), "held": V.combine(vs) == V.HOLDS,
            "numbers": "; ".join(V.describe(n, res, d, thr, f) for n, res, d, thr, f in parts),
            "parts": [{"name": n, "value": res["value"], "ci": list(res["ci"]), "per_seed": res["per_seed"],
                       "direction": d, "threshold": thr, "verdict": v}
                      for (n, res, d, thr, _), v in zip(parts, vs)]}


def noise_claim(seed_results: list[dict], n_boot: int) -> dict | None:
    seeds = []
    for sr in seed_results:
        rows = sr.get("noise") or []
        if len(rows) < 2 or "counts" not in rows[0]:
            return None
        seeds.append({"clean": np.asarray(rows[0]["counts"]), "noisy": np.asarray(rows[-1]["counts"])})
    t0, t1 = seed_results[0]["noise"][0]["t"], seed_results[0]["noise"][-1]["t"]
    res = V.paired_bootstrap(seeds, lambda d: V.chair_i(d["noisy"]) - V.chair_i(d["clean"]), n_boot=n_boot)
    return _claim("(a) hallucination rises with the noise step (Fig. 5 analog)", None,
                  [(f"CHAIR_i(t={t1}) - CHAIR_i(t={t0}), base", res, ">", 0.0, "{:+.3f}")])


def recipe_claims(seed_results: list[dict], out: Path, recipe: str, bpo_name: str, self_name: str,
                  n_boot: int) -> list[dict]:
    claims = []
    tag = f" [{recipe}]"
    seeds = _seeds(seed_results, {"base": "base", "bpo": bpo_name})
    if seeds:
        cut = V.paired_bootstrap(seeds, lambda d: 1 - V.chair_i(d["bpo"]) / np.maximum(V.chair_i(d["base"]), 1e-12),
                                 n_boot=n_boot)
        keep = V.paired_bootstrap(seeds, lambda d: V.recall(d["bpo"]) / np.maximum(V.recall(d["base"]), 1e-12),
                                  n_boot=n_boot)
        claims.append(_claim(f"(b) {bpo_name} cuts CHAIR_i by >= 30% vs base while recall stays >= 90% of "
                             f"base{tag}", recipe,
                             [("relative CHAIR_i cut", cut, ">", CUT, "{:.3f}"),
                              ("recall / base recall", keep, ">", RECALL_KEEP, "{:.3f}")]))
    seeds = _seeds(seed_results, {"sft": "sft", "bpo": bpo_name})
    if seeds:
        res = V.paired_bootstrap(seeds, lambda d: V.chair_i(d["sft"]) - V.chair_i(d["bpo"]), n_boot=n_boot)
        claims.append(_claim(f"(c) {bpo_name} beats SFT on the same chosen answers (Table 4 analog){tag}", recipe,
                             [("CHAIR_i(sft) - CHAIR_i(bpo)", res, ">", 0.0, "{:+.3f}")]))
    seeds = _seeds(seed_results, {"self": self_name, "bpo": bpo_name})
    if seeds:
        res = V.paired_bootstrap(seeds, lambda d: V.chair_i(d["self"]) - V.chair_i(d["bpo"]), n_boot=n_boot)
        claims.append(_claim(f"(d) image-weakened negatives ({bpo_name}) beat the model's own clean-image answers "
                             f"({self_name}) (Table 5 analog){tag}", recipe,
                             [("CHAIR_i(self) - CHAIR_i(weakened)", res, ">", 0.0, "{:+.3f}")]))
    dyn = logp_claim(seed_results, out, bpo_name, recipe, n_boot)
    if dyn:
        claims.append(dyn)
    return claims


def _windows(run: Path, key: str) -> tuple[list[float], list[float]] | None:
    if not (run / "metrics.jsonl").is_file():
        return None
    vals = [r[key] for r in read_metrics(run / "metrics.jsonl") if r.get(key) is not None]
    if len(vals) < 4:
        return None
    k = max(2, len(vals) // 5)
    return vals[:k], vals[-k:]


def logp_claim(seed_results: list[dict], out: Path, bpo_name: str, recipe: str, n_boot: int) -> dict | None:
    """(e): over training, BPO's rejected log-prob falls and falls more than its chosen one; SFT's chosen rises."""
    runs = [out / f"seed-{sr['seed']}" / "runs" for sr in seed_results]
    w = {(k, name): [_windows(r / name, k) for r in runs]
         for k, name in (("logps/chosen", bpo_name), ("logps/rejected", bpo_name), ("logps/chosen", "sft"))}
    if any(x is None for ws in w.values() for x in ws):
        return None
    ch, rj, sft = w[("logps/chosen", bpo_name)], w[("logps/rejected", bpo_name)], w[("logps/chosen", "sft")]
    d_rej = V.window_bootstrap([f for f, _ in rj], [la for _, la in rj], n_boot=n_boot)
    # chosen change minus rejected change: first/last windows of the same steps, so per step c - r
    margin = V.window_bootstrap([[c - r for c, r in zip(fc, fr)] for (fc, _), (fr, _) in zip(ch, rj)],
                                [[c - r for c, r in zip(lc, lr)] for (_, lc), (_, lr) in zip(ch, rj)], n_boot=n_boot)
    d_sft = V.window_bootstrap([f for f, _ in sft], [la for _, la in sft], n_boot=n_boot)
    return _claim(f"(e) during {bpo_name} the rejected log-prob falls, more than the chosen one, while SFT raises "
                  f"the chosen one (Fig. 6 analog; intervals over logged training steps, not images){' [' + recipe + ']'}",
                  recipe, [("change of rejected log-prob", d_rej, "<", 0.0, "{:+.2f}"),
                           ("change of (chosen - rejected)", margin, ">", 0.0, "{:+.2f}"),
                           ("change of SFT chosen log-prob", d_sft, ">", 0.0, "{:+.2f}")])


def check_claims(seed_results: list[dict], out: Path, recipe_variants: dict[str, tuple[str, str]],
                 n_boot: int = 2000) -> list[dict]:
    claims = [c for c in [noise_claim(seed_results, n_boot)] if c]
    for recipe, (bpo_name, self_name) in recipe_variants.items():
        if bpo_name in seed_results[0]["results"]:
            claims += recipe_claims(seed_results, out, recipe, bpo_name, self_name, n_boot)
    return claims


def claim_line(c: dict) -> str:
    return f"**{c['verdict']}**: {c['claim']}. {c['numbers']}"
