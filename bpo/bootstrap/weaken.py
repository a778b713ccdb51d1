"""Image-weakened prompting: answer the question from a diffusion-noised image (``source: weakened``).

The forward diffusion step of Pi et al. (ECCV 2024, arXiv 2403.08730), with the schedule of their
``data_generation/image_weakening_utils/add_noise.py`` (itself VCD's ``vcd_add_noise.py``)::

    beta_t  = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5
    abar_t  = prod_{s <= t} (1 - beta_s)                       t = 0 .. 999
    x_t     = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps,      eps ~ N(0, I)

``x_0`` is the processor's normalised ``pixel_values`` (default; LLaVA's [N, 3, H, W] or Qwen2-VL's
flattened patches alike, the noise is elementwise) or, with ``noise_target="features"``, the
projected image embeddings (a forward hook on the projector). ``sqrt(abar)`` is 0.863 at t=500,
0.593 at t=700, 0.365 at t=900 and 0.285 at t=999.

Departures from the public code (see docs/bootstrap.md and methods.md §1.2):

* Default decoding (``mode="sample"``) samples ``y ~ p(. | noisy image, question)`` directly. The
  committed script instead ran VCD's contrastive decoding ``(1+a)*l_clean - a*l_noisy``, which is the
  anti-hallucination direction, the opposite of exposing the language prior.
* ``mode="contrast"`` uses the reversed sign ``(1+a)*l_noisy - a*l_clean`` (amplify the prior), with an
  optional adaptive-plausibility cut on the *noisy* distribution, and gives each branch its own KV
  cache (VCD's sampler reused the clean cache in the noisy branch after the first token, so the
  contrast silently collapsed to plain sampling). See :mod:`bpo.bootstrap.contrast`.
* Noise is seeded per (seed, record id, step), so a run is reproducible and resumable; the public
  script drew fresh noise from the global RNG.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from bpo.data.records import Negative, Record
from bpo.errors import BpoError
from bpo.jobs import Outcome, fail, record_row
from bpo.models.generation import HFEngine, Request, SamplingSettings, cpu_generator

NUM_STEPS = 1000
BETA_START, BETA_END = 1e-5, 5e-3
MODES = ("sample", "contrast")
NOISE_TARGETS = ("pixels", "features")


@functools.lru_cache(maxsize=4)
def beta_schedule(num_steps: int = NUM_STEPS) -> torch.Tensor:
    """``sigmoid(linspace(-6, 6, T)) * (5e-3 - 1e-5) + 1e-5`` in float64."""
    x = torch.linspace(-6, 6, num_steps, dtype=torch.float64)
    return torch.sigmoid(x) * (BETA_END - BETA_START) + BETA_START


@functools.lru_cache(maxsize=4)
def alpha_bar(num_steps: int = NUM_STEPS) -> torch.Tensor:
    """``abar_t = prod_{s<=t} (1 - beta_s)`` for t = 0 .. T-1 (float64)."""
    return torch.cumprod(1 - beta_schedule(num_steps), dim=0)


def noise_coefficients(step: int, num_steps: int = NUM_STEPS) -> tuple[float, float]:
    """``(sqrt(abar_t), sqrt(1 - abar_t))``: how much signal and how much noise step ``t`` keeps."""
    check_step(step, num_steps)
    abar = float(alpha_bar(num_steps)[step])
    return math.sqrt(abar), math.sqrt(1 - abar)


def check_step(step: int, num_steps: int = NUM_STEPS) -> None:
    if not 0 <= step < num_steps:
        raise BpoError(f"noise step must be in 0..{num_steps - 1}, not {step}")


def add_noise(x: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
    """One-shot forward diffusion ``x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps`` (pure; same dtype as x)."""
    signal, noise = noise_coefficients(step)
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float32)
    out = signal * x.float() + noise * eps.to(x.device)
    return out.to(x.dtype)


def noise_vision(vision: dict, *, step: int, seed: int, record_id: str, key: str = "pixel_values") -> dict:
    """Noise the ``pixel_values`` of one record's vision tensors (other entries, e.g. grids, unchanged)."""
    if key not in vision:
        return vision
    out = dict(vision)
    out[key] = add_noise(vision[key], step, cpu_generator(seed, record_id, step, "pixels"))
    return out


def noise_features(features: torch.Tensor, *, step: int, seed: int, record_id: str) -> torch.Tensor:
    return add_noise(features, step, cpu_generator(seed, record_id, step, "features"))


def parse_steps(text: str | Sequence[int]) -> list[int]:
    steps = [int(s) for s in text.split(",") if s.strip()] if isinstance(text, str) else [int(s) for s in text]
    if not steps:
        raise BpoError("--steps needs at least one step, e.g. 500 or 300,500,900")
    for s in steps:
        check_step(s)
    if len(set(steps)) != len(steps):
        raise BpoError(f"--steps has duplicates: {steps}")
    return steps


class WeakenGenerator:
    """One ``weakened`` negative per record and noise step."""

    source = "weakened"

    def __init__(self, engine: HFEngine, settings: SamplingSettings, *, model: str, steps=(500,),
                 mode: str = "sample", alpha: float = 1.0, noise_target: str = "pixels",
                 plausibility: float = 0.1):
        if not isinstance(engine, HFEngine):
            raise BpoError("image weakening needs the hf engine (it edits the model's inputs); drop --engine vllm")
        if mode not in MODES:
            raise BpoError(f"--mode must be one of {MODES}, not {mode!r}")
        if noise_target not in NOISE_TARGETS:
            raise BpoError(f"--noise-target must be one of {NOISE_TARGETS}, not {noise_target!r}")
        if alpha < 0 or not 0 <= plausibility < 1:
            raise BpoError("--alpha must be >= 0 and --plausibility in [0, 1)")
        self.engine, self.settings = engine, settings
        self.model_name, self.steps = model, parse_steps(steps)
        self.mode, self.alpha, self.noise_target, self.plausibility = mode, alpha, noise_target, plausibility

    def meta(self, step: int) -> dict:
        meta = {"generator": "weaken", "model": self.model_name, "backend": self.engine.name, "step": step,
                "mode": self.mode, "noise_target": self.noise_target, **self.settings.to_meta()}
        if self.mode == "contrast":
            meta.update(alpha=self.alpha, plausibility=self.plausibility)
        return meta

    def fingerprint(self) -> dict:
        return {"generator": "weaken", **{k: v for k, v in self.meta(0).items() if k != "step"},
                "steps": self.steps}

    def request(self, rec: Record, step: int) -> Request:
        seed = self.settings.seed
        key = f"{rec.id}\x1fstep={step}"
        if self.noise_target == "pixels":
            return Request(key, rec, vision_transform=functools.partial(noise_vision, step=step, seed=seed,
                                                                        record_id=rec.id))
        return Request(key, rec, feature_transform=functools.partial(noise_features, step=step, seed=seed,
                                                                     record_id=rec.id))

    def process(self, records: list[Record]) -> list[Outcome]:
        outcomes: dict[str, Outcome] = {}
        todo = []
        for rec in records:
            if not rec.images:
                outcomes[rec.id] = fail(rec, "no image to weaken; image weakening needs records with images "
                                             "(use `bpo bootstrap inject` or `self` for text-only records)")
            else:
                todo.append(rec)
        requests = [self.request(rec, step) for rec in todo for step in self.steps]
        if self.mode == "sample":
            gens = self.engine.generate(requests, self.settings)
        else:
            from bpo.bootstrap.contrast import contrast_generate

            gens = contrast_generate(self.engine, requests, self.settings, alpha=self.alpha,
                                     plausibility=self.plausibility)
        by_key = {g.key: g for g in gens}
        for rec in todo:
            negatives, error = [], None
            for step in self.steps:
                g = by_key[f"{rec.id}\x1fstep={step}"]
                if g.error is not None:
                    error = Outcome(rec.id, error=g.error)
                    break
                if not g.text:
                    error = fail(rec, f"the model produced an empty answer at noise step {step} "
                                      "(try another --seed or a higher --temperature)")
                    break
                negatives.append(Negative(g.text, self.source, self.meta(step)))
            outcomes[rec.id] = error or Outcome(rec.id, row=record_row(rec, negatives))
        return [outcomes[r.id] for r in records]
