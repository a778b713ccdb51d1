"""The per-round report of ``bpo iterate``: ``rounds.json``, ``report.md`` and ``rounds.png``.

Per round: held-out CHAIR_i / CHAIR_s / recall (``round-<r>/eval/chair.json``), POPE F1 and accuracy
(``pope.json``), extra measurements a caller supplies (the toy world's prior pull), the last training
row, and the statistics of the round's bootstrapped negatives: their CHAIR against the ground truth of
the images they were made from. A negative that mentions no object the image lacks teaches nothing
about hallucination, so the share of negatives with a hallucination (their CHAIR_s) falling round after
round is the sign that the policy has stopped producing useful negatives.

The verdict compares the last round with round 1 (and with the base) on held-out CHAIR_i, with a 95%
paired-bootstrap interval over images: both rounds answered the same images, so images are resampled
in pairs and CHAIR_i (hallucinated / mentioned objects, a ratio of sums) is recomputed per resample.
"""

from __future__ import annotations

import json
from pathlib import Path

from bpo.analysis.plotting import color, new_figure, save_figure
from bpo.data.objects import load_vocabulary
from bpo.data.records import read_records
from bpo.errors import BpoError, RecordError
from bpo.eval.chair import chair_item, chair_metrics, load_object_truth
from bpo.io import atomic_write, write_json
from bpo.train.metrics import read_metrics

# (label, key in a round row, what it means): the by-round panels and the table columns
PANELS = [("CHAIR_i", "chair_i", "hallucinated / mentioned objects (lower is better)"),
          ("CHAIR_s", "chair_s", "descriptions with a hallucination (lower is better)"),
          ("recall", "recall", "ground-truth objects mentioned (higher is better)"),
          ("POPE F1", "pope_f1", "yes/no existence questions (higher is better)"),
          ("prior pull", "pull", "toy world: P(partner | \"a A and a\"), partner absent (lower is better)")]


def chair_counts(details: list[dict]) -> dict[str, tuple[int, int]]:
    """``{id: (hallucinated, mentioned)}`` object counts from ``bpo eval chair`` details."""
    return {d["id"]: (len(d["hallucinated"]), len(d["mentioned"])) for d in details}


def chair_i_of(counts: list[tuple[int, int]]) -> float | None:
    mentioned = sum(m for _, m in counts)
    return sum(h for h, _ in counts) / mentioned if mentioned else None


def paired_ratio_bootstrap(a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]], *, n_boot: int = 2000,
                           seed: int = 0) -> dict:
    """CHAIR_i(a) - CHAIR_i(b) over the images both answered, with a 95% percentile interval of that
    difference when images are resampled in pairs (resamples where either side mentions nothing are
    dropped and counted)."""
    import numpy as np

    ids = sorted(set(a) & set(b))
    if not ids:
        raise BpoError("paired bootstrap: the two rounds share no image ids")
    arr = np.asarray([[*a[i], *b[i]] for i in ids], dtype=float)  # columns: h_a, m_a, h_b, m_b
    idx = np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))
    sums = arr[idx].sum(axis=1)  # [n_boot, 4]
    ok = (sums[:, 1] > 0) & (sums[:, 3] > 0)
    diffs = sums[ok, 0] / sums[ok, 1] - sums[ok, 2] / sums[ok, 3]
    tot = arr.sum(axis=0)
    if tot[1] == 0 or tot[3] == 0:
        raise BpoError("paired bootstrap: a round mentions no object at all; CHAIR_i is undefined")
    out = {"diff": float(tot[0] / tot[1] - tot[2] / tot[3]), "n_images": len(ids), "n_boot": int(ok.sum()),
           "dropped_resamples": int((~ok).sum())}
    out["lo"], out["hi"] = (float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))) if ok.any() \
        else (float("nan"), float("nan"))
    return out


def negative_stats(prefs: Path, truth, vocab) -> dict:
    """Per negative source: how many, and their CHAIR against the image's ground truth (``truth``: an
    :class:`bpo.eval.chair.ObjectTruth`; records it lacks are counted as ``no_truth``)."""
    items: dict[str, list[dict]] = {}
    no_truth: dict[str, int] = {}
    for rec in read_records(prefs):
        # by record id, or (COCO instances) by meta.image_id / the image's file name
        key = truth.key_for(rec.id, {"meta": rec.meta, "images": rec.images}) if truth is not None else None
        entry = truth.entries.get(key) if key is not None else None
        for neg in rec.rejected:
            if entry is None:
                no_truth[neg.source] = no_truth.get(neg.source, 0) + 1
                continue
            items.setdefault(neg.source, []).append(chair_item(vocab, neg.text, entry["objects"]))
    out = {}
    for source in sorted(set(items) | set(no_truth)):
        m = chair_metrics(items[source]) if items.get(source) else {"n": 0}
        out[source] = {"n": m["n"] + no_truth.get(source, 0), "scored": m["n"], "chair_i": m.get("chair_i"),
                       "chair_s": m.get("chair_s"), "objects_per_response": m.get("objects_per_response"),
                       "no_truth": no_truth.get(source, 0)}
    return out


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def round_row(cfg, r: int, rp, truth, vocab, extra_metrics=None) -> dict | None:
    """Everything measured for one round, or None when its evaluation has not run."""
    chair = _read(rp.eval / "chair.json")
    if chair is None:
        return None
    row = {"round": r, "policy": "base" if r == 0 else str(rp.adapter)}
    row.update({k: chair["metrics"].get(k) for k in ("chair_i", "chair_s", "recall", "objects_per_response", "n")})
    pope = _read(rp.eval / "pope.json")
    if pope is not None:
        row.update(pope_f1=pope["metrics"].get("f1"), pope_accuracy=pope["metrics"].get("accuracy"),
                   pope_yes_ratio=pope["metrics"].get("yes_ratio"))
    if extra_metrics is not None:
        row.update(extra_metrics(r, rp.adapter if r else None))
    if r:
        metrics = rp.train / "metrics.jsonl"
        last = read_metrics(metrics)[-1] if metrics.exists() else {}
        row["train"] = {k: last.get(k) for k in ("step", "loss", "rewards/accuracies", "rewards/margins",
                                                 "logps/chosen", "logps/rejected") if k in last}
        row["negatives"] = negative_stats(rp.prefs, truth, vocab)
    return row


def _negatives_truth(cfg, vocab):
    """The ground truth of the sft images, or None when the sft records carry no meta.objects."""
    path = cfg.negatives_gt or cfg.sft
    try:
        return load_object_truth(path, vocab)
    except RecordError:
        if cfg.negatives_gt:
            raise
        return None


def verdicts(rows: list[dict], details: dict[int, dict], seed: int = 0) -> list[dict]:
    """Last round vs round 1 and vs the base on held-out CHAIR_i, each with its paired interval."""
    last = max((r["round"] for r in rows), default=0)
    out = []
    for other, what in ((1, "round 1"), (0, "the base model")):
        if last <= other or other not in details or last not in details:
            continue
        claim = f"round {last} beats {what} on held-out CHAIR_i"
        try:
            b = paired_ratio_bootstrap(details[last], details[other], seed=seed)
        except BpoError as exc:  # e.g. a round that mentions no object: no CHAIR_i to compare
            out.append({"claim": claim, "held": False, "clear": False, "text": f"undefined: {claim} ({exc})"})
            continue
        beats = b["diff"] < 0
        sure = b["hi"] < 0
        out.append({"claim": claim, "held": beats, "clear": sure, **b,
                    "text": (f"{'held' if beats else 'did NOT hold'}: round {last} beats {what} on held-out CHAIR_i "
                             f"(difference {b['diff']:+.3f}, 95% paired-bootstrap interval over {b['n_images']} "
                             f"images [{b['lo']:+.3f}, {b['hi']:+.3f}]; "
                             + ("the interval excludes 0)" if sure or b["lo"] > 0 else "the interval includes 0)"))})
    return out


def _fmt(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}" if isinstance(v, float) else str(v)


def format_report(cfg, rows: list[dict], claims: list[dict], title: str = "bpo iterate: per-round report") -> str:
    cols = [p for p in PANELS if any(r.get(p[1]) is not None for r in rows)]
    lines = [f"# {title}", "",
             f"{cfg.rounds} round(s); negatives: {', '.join(cfg.sources)} from the previous round's policy; "
             f"pi_ref: {'the previous round' if cfg.reference == 'previous' else 'the base model'}; records: "
             f"{cfg.records}. Round 0 is the base model. Held-out set: `{cfg.heldout}`.", "",
             "| round | " + " | ".join(c[0] for c in cols) + " | objects / description | train loss (last) |",
             "|---|" + "---|" * (len(cols) + 2)]
    for r in rows:
        lines.append(f"| {r['round']} | " + " | ".join(_fmt(r.get(c[1])) for c in cols)
                     + f" | {_fmt(r.get('objects_per_response'))} | {_fmt(r.get('train', {}).get('loss'))} |")
    lines += ["", "Columns: " + "; ".join(f"*{c[0]}*: {c[2]}" for c in cols), "", "## Verdict", ""]
    lines += [f"- **{c['text']}**" for c in claims] or ["- (needs at least two evaluated rounds)"]
    lines += ["", "## The negatives of each round (their CHAIR against the images' ground truth)", "",
              "| round | source | n | CHAIR_i | CHAIR_s (share with a hallucination) | objects / negative |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        for source, s in (r.get("negatives") or {}).items():
            lines.append(f"| {r['round']} | {source} | {s['n']} | {_fmt(s['chair_i'])} | {_fmt(s['chair_s'])} | "
                         f"{_fmt(s['objects_per_response'])} |")
    lines += ["", "When the negatives' CHAIR_s falls toward the held-out CHAIR_s, the policy's weakened answers "
                  "are no longer much worse than its answers: further rounds have little left to contrast.",
              "", "Plot: `rounds.png`; numbers: `rounds.json`."]
    return "\n".join(lines) + "\n"


def plot_rounds(rows: list[dict], path: Path) -> Path:
    """One panel per metric by round, plus the negatives' CHAIR_i and CHAIR_s per source."""
    cols = [p for p in PANELS if any(r.get(p[1]) is not None for r in rows)]
    fig, axes = new_figure(len(cols) + 1, ncols=3, panel_size=(4.2, 3.2))
    for ax, (label, key, _) in zip(axes, cols):
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color(0))
        ax.set_title(label)
        ax.set_xticks([r["round"] for r in rows])
        ax.set_xlabel("round (0 = base)")
        ax.grid(alpha=0.3)
    ax = axes[len(cols)]
    sources = sorted({s for r in rows for s in (r.get("negatives") or {})})
    for i, source in enumerate(sources):
        for key, style in (("chair_i", "-"), ("chair_s", "--")):
            pts = [(r["round"], r["negatives"][source][key]) for r in rows
                   if source in (r.get("negatives") or {}) and r["negatives"][source][key] is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=color(i),
                    label=f"{source} {key.replace('chair_', 'CHAIR_')}")
    ax.set_title("negatives vs ground truth")
    ax.set_xticks([r["round"] for r in rows if r.get("negatives")] or [0])
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
    if sources:
        ax.legend(fontsize=7)
    for extra in axes[len(cols) + 1:]:
        extra.set_visible(False)
    return save_figure(fig, path)


def write_iteration_report(cfg, paths: list, *, extra_metrics=None, title: str | None = None) -> dict:
    """Collect every evaluated round, write rounds.json / report.md / rounds.png; return the rows and verdicts."""
    vocab = load_vocabulary(cfg.vocab)
    truth = _negatives_truth(cfg, vocab)
    rows, details = [], {}
    for r, rp in enumerate(paths):
        row = round_row(cfg, r, rp, truth, vocab, extra_metrics)
        if row is None:
            continue
        rows.append(row)
        chair = _read(rp.eval / "chair.json")
        if chair.get("details"):
            details[r] = chair_counts(chair["details"])
    claims = verdicts(rows, details, seed=cfg.seed)
    out = Path(cfg.out)
    write_json(out / "rounds.json", {"config": {k: v for k, v in vars(cfg).items()}, "rounds": rows,
                                     "verdicts": claims})
    with atomic_write(out / "report.md") as fh:
        fh.write(format_report(cfg, rows, claims, **({"title": title} if title else {})))
    if rows:
        plot_rounds(rows, out / "rounds.png")
    return {"rounds": rows, "verdicts": claims, "report": str(out / "report.md")}
