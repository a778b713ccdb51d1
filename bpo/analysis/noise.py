"""How image noise hands the answer over to the language prior: Figures 4 and 5 of Bootstrapped-PO.

Pi et al. (ECCV 2024, arXiv 2403.08730) noise the image of a "bear on a horse" probe with the
forward diffusion schedule they use for image-weakened prompting and watch the next-token
probability move from the grounded word to the prior's word as the noise step ``t`` grows
(Fig. 5; their ``llava/eval/model_check_logits.py`` sweeps t = 0..2000 on a T = 2001 variant of
the schedule), and show the greedy answer drifting into hallucination (Fig. 4).

Here, for each probe item and step ``t``:

* the processor's normalised ``pixel_values`` are noised with :func:`bpo.bootstrap.weaken.noise_vision`
  (``x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps``, T = 1000), seeded per (seed, item id, t) exactly
  as ``bpo bootstrap weaken`` seeds it, so a curve can be matched to the negatives it predicts;
* the probability of each target word's **first token** as the next token after the chat-templated
  prompt (+ an optional answer prefix) is averaged over ``seeds`` noise draws (mean and population
  std);
* :func:`greedy_by_step` decodes the greedy answer from the prompt (no prefix) under the first seed.

Convention: ``t = 0`` is the **clean** image (the reference point of the curve). Index 0 of the
schedule would still add noise of std 0.0047; we skip it so the curve starts at the un-noised value.
A target's first token is found the way training tokenises answers (``tokenizer(text)`` without
special tokens, :class:`bpo.models.encoding.Encoder`): after a prefix, the first token where
``prefix + " " + target`` departs from ``prefix``; the context the model sees is everything before it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bpo.analysis.plotting import color, markdown_table, new_figure, save_figure, write_csv
from bpo.data.images import load_record_images
from bpo.data.records import Record, user_turn
from bpo.errors import BpoError
from bpo.io import atomic_write, write_json
from bpo.models.encoding import Encoder

DEFAULT_STEPS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)
CSV_COLUMNS = ("id", "t", "signal", "target", "token", "token_id", "prob_mean", "prob_std", "n_seeds")


@dataclass
class ProbeItem:
    """One probe: an id, the user's question (text, or full chat messages), images and an answer prefix.

    ``images`` are anything the processor accepts (PIL images, HWC uint8 arrays), so a toy world can
    pass rendered arrays without writing files.
    """

    id: str
    question: str | list[dict]
    images: list = field(default_factory=list)
    prefix: str = ""

    def record(self):
        messages = (self.question if isinstance(self.question, list)
                    else [user_turn(self.question, len(self.images))])
        return Record(id=self.id, prompt=messages, chosen="-")


def as_items(records_or_items: Sequence, *, image_root=None, prefix: str = "") -> list[ProbeItem]:
    """Probe items from :class:`ProbeItem`s or bpo records (images loaded from ``image_root``).

    A record's answer prefix is ``meta.answer_prefix`` when set, else ``prefix``.
    """
    items = []
    for obj in records_or_items:
        if isinstance(obj, ProbeItem):
            items.append(obj)
        elif isinstance(obj, Record):
            images = load_record_images(obj, image_root) if obj.images else []
            items.append(ProbeItem(obj.id, obj.prompt, images, obj.meta.get("answer_prefix", prefix)))
        else:
            raise BpoError(f"noise probes take ProbeItem or Record objects, not {type(obj).__name__}")
    if not items:
        raise BpoError("no probe items")
    if len({it.id for it in items}) != len(items):
        raise BpoError("probe item ids must be unique (they seed the noise)")
    return items


def parse_steps(text: str | Sequence[int]) -> list[int]:
    """``"0,100,500"`` or a range ``"0:1000:100"`` (stop excluded), each in 0..999, no duplicates."""
    from bpo.bootstrap.weaken import parse_steps as _parse

    if isinstance(text, str) and ":" in text:
        try:
            parts = [int(p) for p in text.split(":")]
            steps = list(range(*parts))
        except (TypeError, ValueError):
            raise BpoError(f"--steps {text!r}: a range is START:STOP[:STEP] with integers, e.g. 0:1000:100") from None
        text = steps
    return _parse(text)


def target_token(tokenizer, target: str, prefix: str = "") -> tuple[list[int], int]:
    """``(context ids after the prompt, first token id of target)`` for an answer starting ``prefix``."""
    target = target.strip()
    if not target:
        raise BpoError("empty target word in --targets")

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    if not prefix:
        full = ids(target)
        return [], full[0]
    sep = "" if prefix[-1].isspace() else " "
    base, full = ids(prefix), ids(prefix + sep + target)
    i = 0
    while i < min(len(base), len(full)) and base[i] == full[i]:
        i += 1
    if i >= len(full):
        raise BpoError(f"target {target!r} adds no token after prefix {prefix!r}")
    # Merges at the boundary can change the prefix's last token; condition on the common part.
    return full[:i], full[i]


def _model_inputs(model, rows: list[tuple[list[int], dict, dict]]) -> dict:
    """Batch ``(ids, vision, extras)`` rows of equal length (the same prompt) for one forward."""
    import torch

    from bpo.models.logprobs import cat_vision

    ids = torch.tensor([r[0] for r in rows])
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for key in rows[0][2]:
        inputs[key] = torch.tensor([r[2][key] for r in rows])
    visions = [r[1] for r in rows if r[1]]
    if visions:
        inputs.update(cat_vision(visions))
    device = next(model.parameters()).device
    return {k: (v.to(device, dtype=model.dtype) if v.is_floating_point() else v.to(device))
            for k, v in inputs.items()}


def next_token_probs(model, rows: list[tuple[list[int], dict, dict]], token_ids: list[int]):
    """``P(token | row)`` for each row and token: a ``[len(rows), len(token_ids)]`` float tensor."""
    import torch

    with torch.inference_mode():
        logits = model(**_model_inputs(model, rows)).logits[:, -1].float()
    return logits.softmax(-1)[:, token_ids].cpu()


def _encode(processor, item: ProbeItem):
    encoder = Encoder(processor, None, max_length=1 << 30)
    prompt_ids, vision, extras = encoder.encode_prompt(item.record(), images=list(item.images))
    if not vision:
        raise BpoError(f"probe {item.id!r} has no image; the noise probe needs one image per item")
    return prompt_ids, vision, extras


def noise_curve(model, processor, records_or_items: Sequence, targets: Sequence[str],
                steps: Sequence[int] = DEFAULT_STEPS, seeds: Sequence[int] = (0,), *, image_root=None,
                prefix: str = "", batch_size: int = 8, progress: bool = False) -> list[dict]:
    """Rows ``{id, t, signal, target, token, token_id, prob_mean, prob_std, n_seeds}`` per item, t, target.

    ``signal`` = sqrt(abar_t), the share of the clean image left (1 at t = 0). At t = 0 the clean
    image is scored once (``n_seeds`` = 1, std 0).
    """
    import torch
    from tqdm.auto import tqdm

    from bpo.bootstrap.weaken import noise_coefficients, noise_vision

    items = as_items(records_or_items, image_root=image_root, prefix=prefix)
    steps, seeds = parse_steps(steps), [int(s) for s in seeds]
    if not seeds or not targets:
        raise BpoError("the noise probe needs at least one seed and one target")
    tok = processor.tokenizer
    rows = []
    bar = tqdm(total=len(items) * len(steps), desc="noise probe", disable=not progress)
    for item in items:
        prompt_ids, vision, extras = _encode(processor, item)
        # Targets that share a context (the usual case) share the forward passes.
        contexts: dict[tuple[int, ...], list[tuple[str, int]]] = {}
        for target in targets:
            ctx, tid = target_token(tok, target, item.prefix)
            contexts.setdefault(tuple(ctx), []).append((target.strip(), tid))
        for t in steps:
            draws = [None] if t == 0 else seeds
            visions = [vision if s is None else noise_vision(vision, step=t, seed=s, record_id=item.id)
                       for s in draws]
            signal = 1.0 if t == 0 else noise_coefficients(t)[0]
            for ctx, tgts in contexts.items():
                ids = prompt_ids + list(ctx)
                ext = {k: v + [0] * len(ctx) for k, v in extras.items()}
                probs = [next_token_probs(model, [(ids, v, ext) for v in visions[i:i + batch_size]],
                                          [tid for _, tid in tgts]) for i in range(0, len(visions), batch_size)]
                p = torch.cat(probs).double()  # [n_draws, n_targets]
                mean, std = p.mean(0), p.std(0, unbiased=False)
                for j, (target, tid) in enumerate(tgts):
                    rows.append({"id": item.id, "t": t, "signal": signal, "target": target,
                                 "token": tok.decode([tid]), "token_id": tid,
                                 "prob_mean": float(mean[j]), "prob_std": float(std[j]), "n_seeds": len(draws)})
            bar.update()
    bar.close()
    return rows


def greedy_by_step(model, processor, records_or_items: Sequence, steps: Sequence[int] = DEFAULT_STEPS, *,
                   seed: int = 0, image_root=None, max_new_tokens: int = 64) -> list[dict]:
    """Rows ``{id, t, response}``: the greedy answer to each item's prompt on its image noised to step t.

    The noise is the first-seed draw of :func:`noise_curve` (same seed, item id and step), so the
    answer belongs to exactly the image whose probabilities are plotted. Generation goes through
    :class:`bpo.models.generation.HFEngine` (its batching, end-of-turn handling and decoding).
    """
    from bpo.bootstrap.weaken import noise_vision
    from bpo.models.generation import Encoded, HFEngine, Request, SamplingSettings

    items = as_items(records_or_items, image_root=image_root)
    steps = parse_steps(steps)
    engine = HFEngine(model, processor, batch_size=max(1, len(steps)))
    settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=0.0, seed=seed)
    rows = []
    for item in items:
        prompt_ids, vision, extras = _encode(processor, item)
        rec = item.record()
        batch = []
        for t in steps:
            v = vision if t == 0 else noise_vision(vision, step=t, seed=seed, record_id=item.id)
            batch.append(Encoded(Request(f"{item.id}\x1ft={t}", rec), prompt_ids, v, extras,
                                 engine.encoder.count_image_tokens(prompt_ids)))
        for t, tokens in zip(steps, engine.generate_batch(batch, settings)):
            rows.append({"id": item.id, "t": t, "response": engine.decode(tokens, settings)})
    return rows


# ---- tables and plots ----------------------------------------------------------------------------------
def curve_by_target(rows: list[dict]) -> dict[str, list[tuple[int, float, float]]]:
    """``{target: [(t, mean over items of prob_mean, std over items (or the seed std for one item))]}``."""
    groups: dict[str, dict[int, list[dict]]] = {}
    for r in rows:
        groups.setdefault(r["target"], {}).setdefault(r["t"], []).append(r)
    out = {}
    for target, by_t in groups.items():
        pts = []
        for t in sorted(by_t):
            rs = by_t[t]
            mean = sum(r["prob_mean"] for r in rs) / len(rs)
            if len(rs) == 1:
                std = rs[0]["prob_std"]
            else:
                std = math.sqrt(sum((r["prob_mean"] - mean) ** 2 for r in rs) / len(rs))
            pts.append((t, mean, std))
        out[target] = pts
    return out


def plot_noise(rows: list[dict], *, title: str = ""):
    """Probability of each target's first token vs diffusion step t (band: +- std); returns the Figure."""
    fig, (ax,) = new_figure(1, panel_size=(6.4, 4.2))
    tokens: dict[str, dict[str, None]] = {}
    for r in rows:
        tokens.setdefault(r["target"], {})[r["token"]] = None
    for i, (target, pts) in enumerate(curve_by_target(rows).items()):
        t = [p[0] for p in pts]
        m = [p[1] for p in pts]
        # The token shows what is measured: "person" may be scored through a sub-word like " pe"
        # (and through different tokens for items with different answer prefixes).
        toks = list(tokens[target])
        label = f"{target} (token{'s' if len(toks) > 1 else ''} {', '.join(repr(x) for x in toks)})"
        ax.plot(t, m, marker="o", color=color(i), label=label)
        ax.fill_between(t, [max(0.0, p[1] - p[2]) for p in pts], [min(1.0, p[1] + p[2]) for p in pts],
                        color=color(i), alpha=0.2, linewidth=0)
    ax.set_xlabel("diffusion noise step t (0 = clean image)")
    ax.set_ylabel("P(first token of target | image, prompt)")
    ax.set_title(title or "Next-token probability under image noise")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(title="target")
    return fig


def write_outputs(out_dir: str | os.PathLike, rows: list[dict], responses: list[dict] | None,
                  config: dict) -> dict:
    """``noise.csv``/``noise.png``, ``responses.csv``/``responses.md`` and ``noise.json``; returns paths + fig."""
    from pathlib import Path

    out = Path(out_dir)
    files = [write_csv(out / "noise.csv", rows, CSV_COLUMNS)]
    fig = plot_noise(rows)
    files.append(save_figure(fig, out / "noise.png"))
    if responses is not None:
        files.append(write_csv(out / "responses.csv", responses, ("id", "t", "response")))
        with atomic_write(out / "responses.md") as fh:
            fh.write("# Greedy answers under image noise\n\n")
            fh.write(markdown_table(["id", "t", "response"], [[r["id"], r["t"], r["response"]] for r in responses]))
        files.append(out / "responses.md")
    write_json(out / "noise.json", {"config": config, "rows": rows, "responses": responses})
    files.append(out / "noise.json")
    return {"files": files, "figure": fig}
