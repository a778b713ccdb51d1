"""Which parameters train, and how the reference model is obtained, for any HF vision-language model.

- LoRA (default): adapters on every ``nn.Linear`` of the language model (not ``lm_head``, not the
  vision tower). The reference is the *same network with adapters disabled*: no second copy.
- ``train_projector``: the projector is trained in full via peft ``modules_to_save``; peft keeps the
  original module and uses it while adapters are disabled, so the reference sees the *original*
  projector. (The Bootstrapped-PO code trained the projector but shared it with its reference, so
  the reference drifted; tests check that ours does not.)
- Full fine-tuning: the reference is a frozen deep copy (twice the weights in memory: say so).
"""

from __future__ import annotations

import contextlib
import copy

import torch

from bpo.errors import BpoError

_LM_NAMES = ("language_model", "text_model", "llm")
_VISION_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder", "image_encoder")
_PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "visual.merger", "connector", "projector")


def _find(model, candidates) -> str | None:
    names = [n for n, _ in model.named_modules()]
    hits = [n for n in names for c in candidates if n == c or n.endswith("." + c)]
    return min(hits, key=len) if hits else None


def language_model_prefix(model) -> str:
    name = _find(model, _LM_NAMES)
    if name is None:
        raise BpoError(f"cannot find the language model inside {type(model).__name__}; set "
                       "lora.target_modules explicitly")
    return name


def vision_prefix(model) -> str | None:
    return _find(model, _VISION_NAMES)


def projector_name(model) -> str | None:
    # Qwen2-VL's merger lives inside the vision tower; look for it before the tower itself matches.
    return _find(model, _PROJECTOR_NAMES)


def lora_target_modules(model, targets: list[str]) -> list[str]:
    """Expand 'all-linear' to the full names of the language model's Linear layers."""
    if targets != ["all-linear"]:
        return targets
    lm = language_model_prefix(model)
    names = [n for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and (n.startswith(lm + ".")) and not n.endswith("lm_head")]
    if not names:
        raise BpoError("no Linear layers found in the language model for LoRA")
    return names


def prepare_policy(model, lora_cfg, *, gradient_checkpointing: bool = False, copy_reference: bool = True):
    """Freeze/unfreeze per the config and wrap in peft when LoRA is on. Returns (model, ref_model|None).

    ``copy_reference=False``: full fine-tuning returns no reference (ZeRO-3 loads its own: a deep copy of
    partitioned weights would copy empty shards).
    """
    proj = projector_name(model)
    vision = vision_prefix(model)
    ref_model = None
    if gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the transformers 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    if lora_cfg.enabled:
        from peft import LoraConfig, get_peft_model

        model.requires_grad_(False)
        if lora_cfg.init_from:  # continue a saved adapter (iterative rounds): its own rank/targets/projector
            from bpo.models.loading import attach_adapter

            return _check_trainable(attach_adapter(model, lora_cfg.init_from, trainable=True)), None
        modules_to_save = [proj] if (lora_cfg.train_projector and proj) else None
        if lora_cfg.train_projector and not proj:
            raise BpoError("lora.train_projector: no projector module found in this model")
        config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                            target_modules=lora_target_modules(model, lora_cfg.target_modules),
                            modules_to_save=modules_to_save, bias="none")
        from bpo.models.loading import quiet_loading

        with quiet_loading():  # hides peft's own is_gradient_checkpointing deprecation warning, nothing else
            model = get_peft_model(model, config)
    else:
        model.requires_grad_(True)
        if vision and not lora_cfg.train_vision:
            model.get_submodule(vision).requires_grad_(False)
        if proj and not lora_cfg.train_projector:
            model.get_submodule(proj).requires_grad_(False)
        # Qwen2-VL: the merger sits inside the vision tower; honour train_projector after freezing vision.
        if proj and lora_cfg.train_projector:
            model.get_submodule(proj).requires_grad_(True)
        if copy_reference:
            ref_model = copy.deepcopy(model).requires_grad_(False).eval()
    return _check_trainable(model), ref_model


def _check_trainable(model):
    if not any(p.requires_grad for p in model.parameters()):
        raise BpoError("nothing to train: check lora.target_modules / train_projector")
    return model


@contextlib.contextmanager
def reference_mode(model, ref_model=None, *, start: bool = False):
    """Yield the network that computes pi_ref: the frozen copy, or the policy with adapters off.

    ``start``: pi_ref is the policy itself as training starts (``loss.reference=start``); only valid
    before the first optimizer step, which is when the reference cache is filled."""
    if ref_model is not None:
        yield ref_model
        return
    if start:
        yield model
        return
    if hasattr(model, "disable_adapter"):
        from bpo.models.switches import adapters_disabled

        with adapters_disabled(model):  # peft's disable_adapter() without its per-call model scan
            yield model
        return
    raise BpoError("no reference model: enable LoRA, use full fine-tuning, or a reference cache")


def count_parameters(model) -> tuple[int, int]:
    def numel(p):  # ZeRO-3 partitioned parameters are empty locally; ds_numel is the full size
        return getattr(p, "ds_numel", p.numel())

    total = sum(numel(p) for p in model.parameters())
    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, total


def cast_frozen(model, dtype) -> int:
    """Store every frozen floating-point weight in ``dtype``; returns how many tensors were cast.

    With ``run.precision=bf16`` the matrix products run in bf16 under autocast anyway, so an fp32 copy of a
    frozen weight only doubles its memory and is cast again on every forward. Trainable weights (LoRA
    adapters, a trained projector, full fine-tuning) stay fp32: AdamW updates need their precision.
    """
    n = 0
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            n += 1
    return n  # buffers (e.g. rotary inv_freq) stay as they are: positions need fp32
