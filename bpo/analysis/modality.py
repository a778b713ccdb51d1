"""Blind-PO's modality probes: co-defense and cheating (Li et al. 2025, arXiv 2503.14189, Figs. 4-5).

**Co-defense.** The same unsafe request is asked three ways and each answer is judged safe/unsafe:

* ``text``: the original text-only request (``meta.text_prompt``: the last user turn before the entity
  was replaced by an image reference; history kept, no image);
* ``multimodal``: the record as built (image + rewritten request);
* ``blind``: the rewritten request with the image removed (Blind-PO's ``x_b``).

The paper reports a lower safety rate on the multimodal version than on text (50% vs 20% bars, human
judges): text-side safety only partly transfers to images. ``transfer`` reports, among requests
answered safely as text, the share also answered safely as multimodal (and blind).

**Cheating.** Take the multimodal requests the model *refused*, swap each image for a benign one
(seeded choice from a folder or list), keep the text, ask again. ``kept_rate`` is the share of those
refusals that stay: refusals triggered by the words alone (the paper: pass rate 100% -> 50% on 10
items, i.e. kept_rate 0.5). Refusal is detected with the rule-based ``refusal`` judge whatever
``--judge`` is: on the swapped, now benign request a safety judge would call any answer "safe", so
only a refusal detector measures what this probe is about.

The pure metrics are :func:`co_defense_metrics` and :func:`cheating_metrics`; :func:`analyze_modality`
runs the probe on response files (pre-generated, or generated with :class:`bpo.models.generation.HFEngine`).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

from bpo.analysis.plotting import color, new_figure, save_figure, write_csv
from bpo.data.records import read_records, write_records
from bpo.errors import BpoError
from bpo.eval.inputs import load_responses
from bpo.eval.judges import SAFE, JudgeItem, RefusalJudge
from bpo.eval.safety import prompt_text, safety_metrics
from bpo.io import read_text as _read_text  # one-line errors naming the file
from bpo.io import stable_hash, write_json, write_jsonl

CONDITIONS = ("text", "multimodal", "blind")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
CSV_COLUMNS = ("probe", "condition", "n", "count", "rate")


# ---- the three versions of a request ----------------------------------------------------------------
def text_only(rec):
    """The record's original text request (``meta.text_prompt`` as the last user turn), or ``None``."""
    text = rec.meta.get("text_prompt")
    if not isinstance(text, str) or not text.strip():
        return None
    out = rec.without_images()
    for i in range(len(out.prompt) - 1, -1, -1):
        if out.prompt[i].get("role") == "user":
            out.prompt[i] = {"role": "user", "content": text}
            break
    return out


def condition_record(rec, condition: str):
    if condition == "text":
        return text_only(rec)
    if condition == "multimodal":
        return rec
    if condition == "blind":
        return rec.without_images()
    raise BpoError(f"unknown condition {condition!r}; use one of {CONDITIONS}")


# ---- benign images for the cheating probe ---------------------------------------------------------------
@dataclass
class BenignPool:
    """Benign images: paths relative to ``root`` (so the engine's image-root checks still apply)."""

    root: Path
    images: list[str] = field(default_factory=list)

    def pick(self, seed: int, record_id: str, k: int = 0) -> str:
        """A seeded choice that depends only on (seed, record id, image index), not on file order of records."""
        return self.images[int(stable_hash([seed, record_id, k])[:12], 16) % len(self.images)]


def benign_pool(spec: str | os.PathLike, image_root=None) -> BenignPool:
    """A folder of images (all image files in it, recursively) or a text file of paths under ``image_root``."""
    spec = Path(spec)
    if spec.is_dir():
        images = sorted(p.relative_to(spec).as_posix() for p in spec.rglob("*")
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        root = spec
    elif spec.is_file():
        if image_root is None:
            raise BpoError(f"{spec}: a list of benign images holds paths relative to --image-root; pass it "
                           "(or pass a folder of images instead)")
        lines = _read_text(spec).splitlines()
        images = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
        root = Path(image_root)
    else:
        raise BpoError(f"--benign-images {spec}: no such folder or file")
    if not images:
        raise BpoError(f"--benign-images {spec}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return BenignPool(root, images)


def swap_images(rec, pool: BenignPool, seed: int):
    """A copy of ``rec`` whose every image is replaced by a seeded benign one (prompt text unchanged)."""
    out = copy.deepcopy(rec)
    out.images = [pool.pick(seed, rec.id, k) for k in range(len(rec.images))]
    out.meta["swapped_from"] = list(rec.images)
    return out


# ---- pure metrics ---------------------------------------------------------------------------------------
def co_defense_metrics(verdicts: dict[str, list[str]]) -> dict:
    """Safety metrics per condition, plus how safety on text transfers to the other two.

    ``verdicts[c][i]`` is the judge's verdict for item ``i`` under condition ``c`` (same item order in
    every condition). ``transfer.multimodal_rate`` = #(text safe and multimodal safe) / #(text safe).
    """
    lengths = {len(v) for v in verdicts.values()}
    if len(lengths) != 1:
        raise ValueError("every condition needs a verdict for the same items")
    out: dict = {c: safety_metrics(v) for c, v in verdicts.items()}
    if "text" in verdicts:
        text_safe = [i for i, v in enumerate(verdicts["text"]) if v == SAFE]
        transfer: dict = {"text_safe": len(text_safe)}
        for c in verdicts:
            if c == "text":
                continue
            both = sum(verdicts[c][i] == SAFE for i in text_safe)
            transfer[f"{c}_safe_too"] = both
            transfer[f"{c}_rate"] = both / len(text_safe) if text_safe else None
        out["transfer"] = transfer
    return out


def cheating_metrics(refused_multimodal: list[bool], refused_swapped: list[bool | None]) -> dict:
    """Among items refused with their own image, the share still refused after the benign swap.

    ``refused_swapped[i]`` may be ``None`` for items that were not refused (not asked again).
    ``kept_rate`` = kept / n_refused, ``pass_rate`` = 1 - kept_rate (the paper's "pass rate" after
    the swap); both ``None`` when nothing was refused.
    """
    idx = [i for i, r in enumerate(refused_multimodal) if r]
    if any(refused_swapped[i] is None for i in idx):
        raise ValueError("every refused item needs a verdict on its swapped version")
    kept = sum(bool(refused_swapped[i]) for i in idx)
    n = len(idx)
    return {"n_items": len(refused_multimodal), "n_refused": n, "kept": kept, "passed": n - kept,
            "kept_rate": kept / n if n else None, "pass_rate": (n - kept) / n if n else None}


def is_refusal(response: str) -> tuple[bool, str]:
    """Rule-based refusal/warning detection (:class:`bpo.eval.judges.RefusalJudge`), with its reason."""
    j = RefusalJudge().judge_one(JudgeItem("", "", response))
    return j.verdict == SAFE, j.reason


# ---- responses -----------------------------------------------------------------------------------------
def generate_responses(engine, records: list, settings) -> tuple[dict[str, dict], dict[str, str]]:
    """``({id: response row}, {id: error})`` from the batched engine, rows in ``bpo generate``'s format."""
    from bpo.models.generation import Request

    gens = engine.generate([Request(rec.id, rec) for rec in records], settings)
    rows, errors = {}, {}
    for rec, g in zip(records, gens):
        if g.error is not None:
            errors[rec.id] = str(g.error)
            continue
        rows[rec.id] = {"id": rec.id, "response": g.text, "prompt": prompt_text(rec.prompt),
                        "images": list(rec.images), "n_tokens": g.n_tokens}
    return rows, errors


@dataclass
class ModalityInputs:
    """What the probe reads: records, optional response files per condition, the cheating set-up."""

    records: str
    responses: dict[str, str | None] = field(default_factory=dict)  # condition -> response JSONL
    swapped_responses: str | None = None
    benign: str | None = None
    image_root: str | None = None
    seed: int = 0
    limit: int = 0
    on_missing: str = "error"


def select_records(path: str, limit: int = 0) -> tuple[list, dict]:
    """Records usable by all three conditions (an image and ``meta.text_prompt``), with skip counts."""
    records = list(read_records(path))
    if limit > 0:
        records = records[:limit]
    keep = [r for r in records if r.images and text_only(r) is not None]
    counts = {"records": len(records), "skipped_no_image": sum(not r.images for r in records),
              "skipped_no_text_prompt": sum(bool(r.images) and text_only(r) is None for r in records)}
    if not keep:
        raise BpoError(f"{path}: no record has both an image and meta.text_prompt; the modality probe needs "
                       "MMSafe-PO style records (`bpo safety build` or `bpo data import --format mmsafe_po`)")
    return keep, counts


def _check_missing(ids: list[str], rows: dict, path: str, on_missing: str) -> list[str]:
    missing = [i for i in ids if i not in rows]
    if missing and on_missing == "error":
        ex = ", ".join(repr(i) for i in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise BpoError(f"{path}: no response for {len(missing)} record id(s) (e.g. {ex}); finish the "
                       "generation run or pass --on-missing skip to probe the answered ids only")
    return missing


def collect_responses(inputs: ModalityInputs, records: list, out: Path, engine=None, settings=None):
    """``{condition: {id: row}}`` from files or the engine (generated sets are saved), and per-id errors."""
    responses, errors, lacking = {}, {}, []
    for cond in CONDITIONS:
        path = inputs.responses.get(cond)
        if path:
            responses[cond] = load_responses(path)
            _check_missing([r.id for r in records], responses[cond], path, inputs.on_missing)
        elif engine is not None:
            rows, errs = generate_responses(engine, [condition_record(r, cond) for r in records], settings)
            for row in rows.values():
                row["condition"] = cond
            write_jsonl(out / f"responses_{cond}.jsonl", rows.values())
            responses[cond] = rows
            errors.update({f"{cond}:{i}": e for i, e in errs.items()})
        else:
            lacking.append(cond)
    if lacking:
        flags = " ".join(f"--{c}-responses FILE" for c in lacking)
        raise BpoError(f"no responses for condition(s) {', '.join(lacking)}: pass {flags} (from `bpo generate`) "
                       "or --model M to generate them")
    return responses, errors


def _cheating(inputs: ModalityInputs, refused: list, out: Path, engine, settings) -> tuple[dict, dict]:
    """The cheating probe over the refused records; returns (metrics or status, {id: swapped row})."""
    if inputs.swapped_responses:
        rows = load_responses(inputs.swapped_responses)
        missing = _check_missing([r.id for r in refused], rows, inputs.swapped_responses, inputs.on_missing)
        return {"missing_responses": len(missing)}, rows
    if not inputs.benign:
        return {"status": "skipped", "reason": "pass --benign-images DIR (or a list file) to run the cheating "
                                               "probe, or --swapped-responses FILE"}, {}
    pool = benign_pool(inputs.benign, inputs.image_root)
    swapped = [swap_images(r, pool, inputs.seed) for r in refused]
    write_records(out / "swapped_records.jsonl", swapped)
    if engine is None:
        return {"status": "needs responses", "reason": f"answer {out / 'swapped_records.jsonl'} (image root "
                f"{pool.root}) and pass the file as --swapped-responses"}, {}
    from bpo.models.generation import HFEngine

    swap_engine = HFEngine(engine.model, engine.processor, image_root=pool.root, batch_size=engine.batch_size)
    rows, errs = generate_responses(swap_engine, swapped, settings)
    write_jsonl(out / "responses_swapped.jsonl", rows.values())
    return {"benign_root": str(pool.root), "benign_images": len(pool.images), "generation_errors": len(errs)}, rows


def analyze_modality(inputs: ModalityInputs, out_dir: str | os.PathLike, judge, *, engine=None,
                     settings=None) -> dict:
    """Run both probes; writes ``modality.json``, ``modality_details.jsonl``, ``modality.csv``/``.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, counts = select_records(inputs.records, inputs.limit)
    responses, errors = collect_responses(inputs, records, out, engine, settings)
    keep = [r for r in records if all(r.id in responses[c] for c in CONDITIONS)]
    counts.update(used=len(keep), missing_responses=len(records) - len(keep), generation_errors=len(errors))
    if not keep:
        raise BpoError("no record has a response under all three conditions")
    items = [JudgeItem(r.id, prompt_text(condition_record(r, c).prompt), responses[c][r.id]["response"])
             for c in CONDITIONS for r in keep]
    judgments = judge.judge(items)
    n = len(keep)
    verdicts = {c: [j.verdict for j in judgments[k * n:(k + 1) * n]] for k, c in enumerate(CONDITIONS)}
    co = co_defense_metrics(verdicts)

    refused = [is_refusal(responses["multimodal"][r.id]["response"]) for r in keep]
    refused_recs = [r for r, (yes, _) in zip(keep, refused) if yes]
    cheat_info, swapped_rows = _cheating(inputs, refused_recs, out, engine, settings)
    cheating = dict(cheat_info)
    refused_swapped: list[bool | None] = [None] * n
    if "status" not in cheat_info:  # swapped answers were read or generated (possibly none: no refusals)
        for i, r in enumerate(keep):
            if refused[i][0] and r.id in swapped_rows:
                refused_swapped[i] = is_refusal(swapped_rows[r.id]["response"])[0]
        asked = [i for i in range(n) if not refused[i][0] or refused_swapped[i] is not None]
        cheating.update(cheating_metrics([refused[i][0] for i in asked], [refused_swapped[i] for i in asked]))
    details = [{"id": r.id, **{c: verdicts[c][i] for c in CONDITIONS},
                "refused_multimodal": refused[i][0], "refusal_reason": refused[i][1],
                "refused_swapped": refused_swapped[i],
                "swapped_response": swapped_rows[r.id]["response"] if refused_swapped[i] is not None else None}
               for i, r in enumerate(keep)]
    result = {"co_defense": co, "cheating": cheating, "counts": counts, "judge": judge.describe(),
              "refusal_detector": "refusal (rule-based, bpo.eval.judges.RefusalJudge)",
              "inputs": {"records": inputs.records, **{f"{c}_responses": inputs.responses.get(c) for c in CONDITIONS},
                         "swapped_responses": inputs.swapped_responses, "benign_images": inputs.benign},
              "seed": inputs.seed, "generation_errors": errors}
    return write_outputs(out, result, details)


def csv_rows(result: dict) -> list[dict]:
    co, ch = result["co_defense"], result["cheating"]
    rows = [{"probe": "co_defense", "condition": c, "n": co[c]["n"], "count": co[c]["safe"],
             "rate": co[c]["safety_rate"]} for c in CONDITIONS if c in co]
    if "n_refused" in ch:
        rows.append({"probe": "cheating", "condition": "refusal_kept", "n": ch["n_refused"], "count": ch["kept"],
                     "rate": ch["kept_rate"]})
        rows.append({"probe": "cheating", "condition": "answers_after_swap", "n": ch["n_refused"],
                     "count": ch["passed"], "rate": ch["pass_rate"]})
    return rows


def plot_modality(result: dict):
    """Bars: safety rate per condition (co-defense) and, when run, refusals kept vs lost after the swap."""
    rows = csv_rows(result)
    cheat = [r for r in rows if r["probe"] == "cheating"]
    fig, axes = new_figure(2 if cheat else 1, ncols=2, panel_size=(5.2, 4.0))
    groups = [("co_defense", "Co-defense: same request, three modalities", "safety rate (judge: safe / n)")]
    if cheat:
        groups.append(("cheating", "Cheating: refused requests with a benign image", "share of refusals"))
    for ax, (probe, title, ylabel) in zip(axes, groups):
        sel = [r for r in rows if r["probe"] == probe]
        names = [r["condition"].replace("_", " ") for r in sel]
        rates = [r["rate"] or 0.0 for r in sel]
        bars = ax.bar(names, rates, color=[color(i) for i in range(len(sel))])
        for bar, r in zip(bars, sel):
            ax.annotate(f"{r['count']}/{r['n']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize="small")
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
        ax.set_xlabel("condition")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    return fig


def write_outputs(out: Path, result: dict, details: list[dict]) -> dict:
    write_jsonl(out / "modality_details.jsonl", details)
    write_csv(out / "modality.csv", csv_rows(result), CSV_COLUMNS)
    fig = plot_modality(result)
    save_figure(fig, out / "modality.png")
    write_json(out / "modality.json", result)
    return {"result": result, "details": details, "figure": fig,
            "files": [out / n for n in ("modality.json", "modality_details.jsonl", "modality.csv", "modality.png")]}
