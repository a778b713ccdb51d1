"""Image features computed once per step and reused by the policy pass and the reference pass.

Under LoRA the reference is the policy with its adapters off, and the adapters sit only on the language
model's linears: the vision tower (and, unless ``lora.train_projector``, the projector) computes the same
image features in both passes, from the same pixel tensors. :func:`shared_inputs` computes them once and
hands them to both forwards through transformers 5's own ``mm_encoder_outputs`` argument (LLaVA, LLaVA-NeXT,
Qwen2-VL / Qwen2.5-VL: ``forward(mm_encoder_outputs={"image": get_image_features(...)})`` skips the
tower), so no model code is copied. With a trained projector only the vision tower's output is shared: its
``forward`` is wrapped for the duration of one pass and the projector runs in each pass (the reference pass
uses peft's original projector copy, as before).

Exact by construction, and only used where it is: the features are a function of the pixel tensors and
frozen weights alone. :func:`share_reason` says why not otherwise, and the caller computes them per pass:

- every parameter on the image side (the inner model minus its language model) is frozen and is an
  ordinary local tensor (not a ZeRO-3 / FSDP shard, which is gathered only by the wrapped forward);
- no peft layer sits on the image side (disabling the adapters would change its output);
- the model is not ``torch.compile``-d (the compiled forward would be traced for another argument set).

The cache key adds the autocast state (a policy pass under bf16 autocast and a reference pass outside it
compute different features, so they are not shared) and, where a dropout or batch-norm module or a non-zero
``*dropout`` config value makes the image side depend on ``train()`` / ``eval()``, the module's mode.
The cache lives in the step's :class:`~bpo.models.packed.PackedBatch`, whose device tensors are the same
objects in both passes; the pixel tensor's identity and version are checked on every hit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect

import torch

# inputs that get_image_features reads, besides pixel_values (by family: LLaVA-NeXT, Qwen2-VL)
_IMAGE_ARGS = ("image_sizes", "image_grid_thw")
_TRAIN_DEPENDENT = (torch.nn.Dropout, torch.nn.modules.batchnorm._BatchNorm)


def _inner(base):
    inner = getattr(base, "model", None)
    return inner if getattr(inner, "language_model", None) is not None else None


def _image_side(inner) -> list[torch.nn.Module]:
    """The inner model's children other than the language model (vision tower, projector, newline ...)."""
    return [m for name, m in inner.named_children() if name != "language_model"]


def _image_params(inner) -> list[torch.nn.Parameter]:
    lm = {id(p) for p in inner.language_model.parameters()}
    return [p for p in inner.parameters() if id(p) not in lm]


def _frozen_local(params) -> str | None:
    for p in params:
        if p.requires_grad:
            return "trained"
        if hasattr(p, "ds_id") or type(p).__name__ == "DTensor":
            return "sharded across processes (gathered only inside the model's own forward)"
    return None


def _has_peft(modules) -> bool:
    return any(type(m).__module__.startswith("peft.") for mod in modules for m in mod.modules())


def _vision_module(inner):
    for name in ("vision_tower", "visual"):
        mod = getattr(inner, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    return None


def share_reason(base) -> tuple[str | None, str | None]:
    """``(mode, reason)``: ``"features"`` (tower + projector shared), ``"tower"`` (the vision tower only,
    the projector trained), or ``(None, why not)``."""
    inner = _inner(base)
    if inner is None or not callable(getattr(inner, "get_image_features", None)):
        return None, "no inner model with get_image_features"
    if "mm_encoder_outputs" not in inspect.signature(type(base).forward).parameters:
        return None, f"{type(base).__name__}.forward takes no mm_encoder_outputs"
    if getattr(base, "_compiled_call_impl", None) is not None:
        return None, "run.compile: the compiled forward is traced with pixel values"
    side = _image_side(inner)
    problem = _frozen_local(_image_params(inner))
    if problem is None and not _has_peft(side):
        return "features", None
    vision = _vision_module(inner)
    if vision is None or _has_peft([vision]):
        return None, "adapters on the vision tower"
    tower_problem = _frozen_local(vision.parameters())
    if tower_problem is not None:
        return None, f"the vision tower is {tower_problem}"
    if not any(m is vision for m in side):  # Qwen2-VL's merger (the projector) sits inside `visual`
        return None, "the projector is trained and sits inside the vision tower"
    return "tower", None


def _train_dependent(modules) -> bool:
    for mod in modules:
        for m in mod.modules():
            if isinstance(m, _TRAIN_DEPENDENT) and (not isinstance(m, torch.nn.Dropout) or m.p > 0):
                return True
            config = getattr(m, "config", None)
            if config is not None and any(k.endswith("dropout") and isinstance(v, (int, float)) and v > 0
                                          for k, v in vars(config).items()):
                return True
    return False


def _key(inputs: dict, mode: str, modules) -> tuple:
    pixels = inputs["pixel_values"]
    device = pixels.device.type
    autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
    training = tuple(m.training for m in modules) if _train_dependent(modules) else None
    return ("vision", mode, tuple(id(m) for m in modules), autocast, training)


def _lookup(cache: dict, key: tuple, pixels: torch.Tensor):
    hit = cache.get(key)
    if hit is not None and hit[0] is pixels and hit[1] == pixels._version:
        return hit[2]
    return None


def _features(inner, inputs: dict, cache: dict, modules) -> dict:
    pixels = inputs["pixel_values"]
    key = _key(inputs, "features", modules)
    out = _lookup(cache, key, pixels)
    if out is None:
        extra = {k: inputs[k] for k in _IMAGE_ARGS if inputs.get(k) is not None}
        with torch.no_grad():  # every parameter it reads is frozen: no graph to keep
            out = inner.get_image_features(pixel_values=pixels, **extra, return_dict=True)
        cache[key] = (pixels, pixels._version, out)
    rest = {k: v for k, v in inputs.items() if k != "pixel_values"}
    # a fresh dict per forward: the model fills in missing modalities in place
    return {**rest, "mm_encoder_outputs": {"image": dataclasses.replace(out)}}


@contextlib.contextmanager
def _tower_cached(vision, pixels: torch.Tensor, cache: dict, key: tuple):
    """``vision.forward`` answers from the cache during one forward (the projector still runs)."""
    real = vision.forward

    def forward(*args, **kwargs):
        out = _lookup(cache, key, pixels)
        if out is None:
            with torch.no_grad():
                out = real(*args, **kwargs)
            cache[key] = (pixels, pixels._version, out)
        return dataclasses.replace(out)  # get_image_features overwrites pooler_output on what it gets

    vision.forward = forward
    try:
        yield
    finally:
        del vision.forward  # back to the class's forward


def shared_inputs(base, inputs: dict, cache: dict, mode: str | None):
    """``(inputs, context)`` for one forward: image features from ``cache`` (computed on the first pass).

    ``mode`` from :func:`share_reason`; ``None`` or no ``pixel_values`` leaves the inputs as they are."""
    if mode is None or inputs.get("pixel_values") is None:
        return inputs, contextlib.nullcontext()
    inner = _inner(base)
    if mode == "features":
        return _features(inner, inputs, cache, _image_side(inner)), contextlib.nullcontext()
    vision = _vision_module(inner)
    key = _key(inputs, "tower", [vision])
    return inputs, _tower_cached(vision, inputs["pixel_values"], cache, key)
