"""Model-based measurements on the toy world: CHAIR per noise step, the prior pull, POPE and the early-stop checks.

Because every scene's objects are known exactly and captions follow one grammar, nothing here
needs a synonym table or a judge (the CHAIR arithmetic itself is :mod:`bpo.toy.chair`):

* :func:`prior_pull`: the mechanism-specific metric. With the response forced to ``"a A and a"``
  where ``A`` is in the image and its partner is not, the probability the model gives to the
  partner's two words, compared with the mean probability of any other absent kind.
* :func:`noise_curve`: CHAIR of greedy captions on images noised with the diffusion schedule
  of the Bootstrapped-PO paper (Figure 5 analog), at steps ``t``: the same noise function
  ``bpo bootstrap weaken`` uses (:func:`bpo.bootstrap.weaken.add_noise`).
* :func:`pope_scores` / :func:`existence_prior`: first-token yes/no checks per POPE split, and the
  false-yes rate on absent partners against equally far kinds.
* :func:`heldout_chair` / :func:`heldout_pope`: what pretraining's early stop looks at.

Models are loaded with :func:`bpo.models.loading.load`, the path every user model takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bpo.models.loading import load
from bpo.toy.chair import chair_scores
from bpo.toy.model import load_world
from bpo.toy.world import DESCRIBE_PROMPTS, World


def add_diffusion_noise(pixels, t: int, generator):
    """Noised copy of normalised pixels at step ``t`` (``bpo.bootstrap.weaken.add_noise``); t=0 is clean."""
    from bpo.bootstrap.weaken import add_noise

    return pixels if t <= 0 else add_noise(pixels, int(t), generator)


# ---- model-based measurements ---------------------------------------------------------------------
def _pixels(world: World, scenes, processor):
    import numpy as np

    from bpo.toy.tensors import pixel_tensor

    return pixel_tensor(np.stack([world.render(s) for s in scenes]), processor)


def noise_curve(model, processor, world: World, scenes, steps: Sequence[int] = (0, 100, 300, 500, 700, 900),
                *, seed: int = 0, prompt: str = DESCRIBE_PROMPTS[0]) -> list[dict]:
    """CHAIR scores of greedy captions at each noise step ``t`` (one fixed noise draw per step)."""
    import torch

    from bpo.toy.tensors import greedy_captions

    clean = _pixels(world, scenes, processor)
    truths = [s.names for s in scenes]
    rows = []
    for t in steps:
        gen = torch.Generator().manual_seed(seed * 10_007 + int(t))
        caps = greedy_captions(model, processor, add_diffusion_noise(clean, int(t), gen), prompt=prompt)
        rows.append({"t": int(t), **chair_scores(caps, truths, world.kinds, world.partner),
                     "examples": caps[:3], "captions": caps})
    return rows


def _pull_cases(world: World, scenes) -> list[tuple[int, str]]:
    """(scene index, A) with A the first object (chain order) whose partner is absent."""
    cases = []
    for i, s in enumerate(scenes):
        a = next((n for n in s.names if world.partner[n] not in s.names), None)
        if a is not None:
            cases.append((i, a))
    return cases


def kind_probabilities(model, processor, world: World, pixels, prefixes: list[str],
                       prompt: str = DESCRIBE_PROMPTS[0]):
    """``P(colour shape | image, prompt, prefix)`` for every kind: a ``[N, n_kinds]`` tensor.

    Two teacher-forced passes: the colour distribution after the prefix, then the shape
    distribution after each colour (all prefixes must tokenise to the same length).
    """
    import torch

    from bpo.toy.tensors import PromptCache

    tok = processor.tokenizer
    cache = PromptCache(processor, pixels.shape[-1])
    p_ids = cache.ids(prompt)
    rows = [p_ids + tok(x, add_special_tokens=False)["input_ids"] for x in prefixes]
    colours, shapes = world.cfg.colours, world.cfg.shapes
    c_ids = tok.convert_tokens_to_ids(colours)
    s_ids = tok.convert_tokens_to_ids(shapes)
    with torch.no_grad():
        ids = torch.tensor(rows)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels).logits
        p_colour = logits[:, -1].float().softmax(-1)[:, c_ids]  # [N, C]
        ext = torch.cat([ids.repeat_interleave(len(colours), 0),
                         torch.tensor(c_ids).repeat(len(rows)).unsqueeze(1)], 1)
        logits = model(input_ids=ext, attention_mask=torch.ones_like(ext),
                       pixel_values=pixels.repeat_interleave(len(colours), 0)).logits
        p_shape = logits[:, -1].float().softmax(-1)[:, s_ids].view(len(rows), len(colours), len(shapes))
    joint = p_colour.unsqueeze(-1) * p_shape  # [N, C, S] in kind order (colour-major, as world.kinds)
    return joint.flatten(1)


def prior_pull(model, processor, world: World, scenes, *, batch_size: int = 64) -> dict:
    """Mean P(partner | "a A and a") over scenes where A is present and its partner absent.

    ``absent_other`` is the mean probability of one absent non-partner kind (the no-prior
    reference inside the same model); ``pull_ratio`` = pull / absent_other; ``present_mass`` is the
    probability of naming another object that *is* in the image (the grounded continuation).
    """
    import torch

    cases = _pull_cases(world, scenes)
    pixels = _pixels(world, scenes, processor)
    kinds = world.kinds
    pull, other, present = [], [], []
    for s in range(0, len(cases), batch_size):
        chunk = cases[s: s + batch_size]
        probs = kind_probabilities(model, processor, world, pixels[[i for i, _ in chunk]],
                                   [f"a {a} and a" for _, a in chunk])
        for (i, a), p in zip(chunk, probs):
            names = scenes[i].names
            partner = world.partner[a]
            pull.append(p[kinds.index(partner)].item())
            others = [k for k in range(len(kinds)) if kinds[k] not in names and kinds[k] != partner]
            other.append(p[others].mean().item())
            present.append(sum(p[kinds.index(n)].item() for n in names if n != a))
    mean = lambda xs: float(torch.tensor(xs).mean()) if xs else 0.0  # noqa: E731
    pull_m, other_m = mean(pull), mean(other)
    return {"pull": pull_m, "absent_other": other_m, "pull_ratio": pull_m / other_m if other_m else 0.0,
            "present_mass": mean(present), "n": len(cases)}


def pope_scores(model, processor, world: World, scenes, *, batch_size: int = 128,
                splits: Sequence[str] = ("random", "popular", "adversarial")) -> dict:
    """POPE accuracy and yes-rate per split from the first answer token (``yes`` vs ``no`` logit).

    A quick teacher-forced check for the recipe study; ``bpo eval pope`` on generated answers is the
    public evaluation.
    """
    import torch

    from bpo.toy.tensors import PromptCache

    tok = processor.tokenizer
    cache = PromptCache(processor, world.cfg.image_size)
    yes, no = tok.convert_tokens_to_ids(["yes", "no"])
    pixels = _pixels(world, scenes, processor)
    out = {}
    for split in splits:
        items = [(i, q, a) for i, s in enumerate(scenes) for q, a, _ in world.pope_questions(s, split)]
        correct = said_yes = 0
        for b in range(0, len(items), batch_size):
            chunk = items[b: b + batch_size]
            rows = [cache.ids(q) for _, q, _ in chunk]
            width = max(map(len, rows))
            ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])  # left pad
            mask = (ids != tok.pad_token_id).long()
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels[[i for i, _, _ in chunk]]).logits
            pred_yes = (logits[:, -1, yes] > logits[:, -1, no]).tolist()
            said_yes += sum(pred_yes)
            correct += sum(p == (a == "yes") for p, (_, _, a) in zip(pred_yes, chunk))
        out[split] = {"accuracy": correct / max(1, len(items)), "yes_rate": said_yes / max(1, len(items)),
                      "n": len(items)}
    return out


def negative_kind(world: World, scene, name: str) -> str:
    """How an absent kind relates to a scene: ``partner`` / ``partner_near`` (the absent partner of a present
    object, sharing no / some colour or shape with a present object), ``near`` (a non-partner sharing a colour
    or shape: a perceptual near miss) or ``far`` (neither)."""
    present = scene.names
    near = any(name.split()[0] == n.split()[0] or name.split()[1] == n.split()[1] for n in present)
    if name in {world.partner[n] for n in present}:
        return "partner_near" if near else "partner"
    return "near" if near else "far"


def existence_prior(model, processor, world: World, scenes, *, batch_size: int = 256) -> dict:
    """First-token false-yes rate on *every* absent kind, grouped by :func:`negative_kind`.

    POPE's adversarial split mixes the prior with perception: the toy's partners never share colour
    and shape with their object, so its adversarial negatives are perceptually easier than random
    ones (most of which are near misses). The prior in the yes/no answers is ``partner`` vs ``far``
    (equally far from every present object, only the partner relation differs); ``excess`` is their ratio.
    ``p_yes`` is each group's mean P(yes) (softmax over the two answers' first-token logits) and ``p_excess``
    the partner / far ratio of it: like the caption pull, it shows the prior where it does not flip a decision.
    """
    import torch

    from bpo.toy.tensors import PromptCache
    from bpo.toy.world import EXIST_TEMPLATE

    tok = processor.tokenizer
    cache = PromptCache(processor, world.cfg.image_size)
    yes, no = tok.convert_tokens_to_ids(["yes", "no"])
    pixels = _pixels(world, scenes, processor)
    items = [(i, k, negative_kind(world, s, k)) for i, s in enumerate(scenes) for k in world.kinds
             if k not in s.names]
    said, total, p_yes = {}, {}, {}
    for b in range(0, len(items), batch_size):
        chunk = items[b: b + batch_size]
        rows = [cache.ids(EXIST_TEMPLATE.format(name=k)) for _, k, _ in chunk]
        width = max(map(len, rows))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])  # left pad
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(),
                           pixel_values=pixels[[i for i, _, _ in chunk]]).logits[:, -1]
        # P(yes) between the two answers: the prior can show in the probability before it flips a decision
        prob = torch.softmax(logits[:, [yes, no]].float(), -1)[:, 0].tolist()
        for (_, _, group), y, p in zip(chunk, (logits[:, yes] > logits[:, no]).tolist(), prob):
            said[group] = said.get(group, 0) + y
            total[group] = total.get(group, 0) + 1
            p_yes[group] = p_yes.get(group, 0.0) + p
    out = {g: {"false_yes": said[g] / total[g], "p_yes": p_yes[g] / total[g], "n": total[g]} for g in sorted(total)}
    far, partner = out.get("far", {}).get("false_yes"), out.get("partner", {}).get("false_yes")
    out["excess"] = partner / far if far and partner is not None else None
    far_p, partner_p = out.get("far", {}).get("p_yes"), out.get("partner", {}).get("p_yes")
    out["p_excess"] = partner_p / far_p if far_p and partner_p is not None else None
    return out


# ---- the held-out checks of pretraining's early stop -------------------------------------------
def heldout_chair(model, world: World, processor, n: int) -> tuple[float, float]:
    """(CHAIR_i, parse rate) of greedy captions on ``n`` held-out scenes."""
    scenes = [world.scene("heldout", i) for i in range(n)]
    pixels = _pixels(world, scenes, processor)
    from bpo.toy.tensors import greedy_captions

    caps = greedy_captions(model, processor, pixels)
    scores = chair_scores(caps, [s.names for s in scenes], world.kinds)
    return scores["chair_i"], scores["parse_rate"]


def heldout_pope(model, world: World, processor, n: int) -> float:
    """First-token yes/no accuracy on the random-split existence questions of ``n`` held-out scenes."""
    scenes = [world.scene("heldout", i) for i in range(n)]
    was_training = model.training
    model.eval()
    try:
        return pope_scores(model, processor, world, scenes, splits=("random",))["random"]["accuracy"]
    finally:
        model.train(was_training)


def measure(model_dir: str | Path, *, adapter: str | None = None, world: World | None = None,
            n_images: int = 200, noise_steps: Sequence[int] = (0, 100, 300, 500, 700, 900),
            seed: int = 0, split: str = "eval", pope: bool = False) -> dict:
    """Load a model (+ optional peft adapter) through ``bpo.models.loading.load`` and measure it.

    ``world`` defaults to the one saved with a pretrained toy model (``toy.json``); pass it for
    models trained elsewhere from a toy base. Returns ``{"pull": {...}, "noise": [{t, chair_i, ...}]}``
    (+ ``"pope"`` per split and ``"existence_prior"`` with ``pope=True``).
    """
    world = world or load_world(model_dir)
    model, processor = load(str(model_dir), adapter=adapter)
    scenes = [world.scene(split, i) for i in range(n_images)]
    out = {"pull": prior_pull(model, processor, world, scenes),
           "noise": noise_curve(model, processor, world, scenes, noise_steps, seed=seed)}
    if pope:
        out["pope"] = pope_scores(model, processor, world, scenes)
        out["existence_prior"] = existence_prior(model, processor, world, scenes)
    return out
