"""Load any Hugging Face image-text-to-text model and its processor from a hub id or a local path.

This is the only place models are loaded, so every stage (bootstrap, train, eval, demo) takes the
code path a user takes with ``llava-hf/llava-1.5-7b-hf`` or ``Qwen/Qwen2-VL-7B-Instruct``.
``trust_remote_code`` is off unless the user asks for it; weights load as safetensors only.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bpo.errors import BpoError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "auto": "auto"}


# Processors that insist on a video processor, which needs torchvision (Qwen2-VL, Qwen2.5-VL, ...).
IMAGE_ONLY_FALLBACKS = ("Qwen2VLProcessor", "Qwen2_5_VLProcessor")
_IMAGE_ONLY_CACHE: dict[str, type] = {}
LEGACY_NAMES = {"Qwen2VLImageOnlyProcessor": "Qwen2VLProcessor"}


def image_only_processor_cls(name: str):
    """An image-only subclass of the stock processor class ``name`` (for machines without torchvision).

    Without torchvision (CPU boxes, this project's CI) the stock ``AutoProcessor`` of Qwen2-VL and
    Qwen2.5-VL cannot be built at all: their video processor needs it. Images only need the image
    processor and tokenizer, so the subclass passes no video processor; everything else (token
    expansion, ``image_grid_thw``) is the stock code. It saves itself under the stock class name, so a
    saved folder loads anywhere with the stock class (never under this private name).
    """
    if name in _IMAGE_ONLY_CACHE:
        return _IMAGE_ONLY_CACHE[name]
    import transformers

    stock = getattr(transformers, name)

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        stock.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def to_dict(self):
        out = stock.to_dict(self)
        out["processor_class"] = name
        return out

    def save_pretrained(self, save_directory, *args, **kwargs):
        result = stock.save_pretrained(self, save_directory, *args, **kwargs)
        _rename_saved_class(Path(save_directory), name)
        return result

    cls = type(f"{name}ImageOnly", (stock,), {"__init__": __init__, "to_dict": to_dict,
                                               "save_pretrained": save_pretrained, "__doc__": stock.__doc__})
    _IMAGE_ONLY_CACHE[name] = cls
    return cls


def _rename_saved_class(out: Path, name: str) -> None:
    # Sub-processors record the processor class they were saved from; write the stock name everywhere.
    import json

    for fname in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        f = out / fname
        if not f.is_file():
            continue
        data = json.loads(f.read_text())
        if "processor_class" in data and data["processor_class"] != name:
            data["processor_class"] = name
            f.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (transformers' messages often start with a newline)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def _processor_class_name(path: str) -> str | None:
    import json

    for name in ("processor_config.json", "preprocessor_config.json"):
        f = Path(path) / name
        if f.is_file():
            try:
                return json.loads(f.read_text()).get("processor_class")
            except (OSError, ValueError):
                return None
    return None


@contextmanager
def quiet_loading():
    """No "Loading weights" / "Writing model shards" bars (nor peft's deprecation warning) while bpo loads a model.

    A demo loads a tiny model dozens of times; one bar each buries the output. The previous setting is
    restored, so a user's own transformers calls keep their bars.
    """
    import warnings

    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # peft 0.21's PeftModel.__init__ reads transformers' deprecated `is_gradient_checkpointing`; the
            # warning is theirs, not the user's, and would print on every run. Only that one is hidden.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def refuse_pickled_weights(name_or_path: str, what: str = "model") -> None:
    """A local model folder with only pickled weights (``*.bin``/``*.pt``) is refused in one line, before
    transformers says "no file named model.safetensors"."""
    path = Path(os.path.expanduser(name_or_path))
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickled = sorted(p for ext in ("*.bin", "*.pt", "*.pth") for p in path.glob(ext))
    if pickled:
        from bpo.io import pickled_weights_error

        raise pickled_weights_error(pickled[0], what)


def load_processor(name_or_path: str, *, trust_remote_code: bool = False, revision: str | None = None):
    """``AutoProcessor.from_pretrained`` with a clear error and an image-only fallback (see above)."""
    from transformers import AutoProcessor

    _check_exists(name_or_path)
    from transformers import ProcessorMixin

    error: Exception | None = None
    try:
        with quiet_loading():
            proc = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    except (AttributeError, ImportError, TypeError, ValueError, OSError) as exc:
        proc, error = None, exc
    if not isinstance(proc, ProcessorMixin):
        # AutoProcessor silently returns a bare tokenizer when the processor class cannot be built.
        cls_name = _processor_class_name(name_or_path) if os.path.isdir(name_or_path) else None
        # Folders saved by older bpo versions name the private subclass; it is the stock class's image-only form.
        cls_name = LEGACY_NAMES.get(cls_name, cls_name)
        if cls_name not in IMAGE_ONLY_FALLBACKS:
            why = first_line(error) if error else "it has no multimodal processor"
            raise BpoError(f"cannot load a processor from {name_or_path!r} ({why}); pass a local model "
                           "directory or a hub id you can reach") from None
        try:
            proc = image_only_processor_cls(cls_name).from_pretrained(name_or_path, revision=revision)
        except (AttributeError, ImportError, TypeError, ValueError, OSError) as exc:
            raise BpoError(f"cannot load a processor from {name_or_path!r} ({first_line(exc)})") from None
    if getattr(proc, "chat_template", None) is None and getattr(proc.tokenizer, "chat_template", None) is None:
        raise BpoError(f"{name_or_path!r} has no chat template; bpo renders prompts with the processor's chat "
                       "template: add one to the processor (processor.chat_template = ...; save_pretrained)")
    tok = proc.tokenizer
    if tok.pad_token_id is None:
        # Padding positions are masked everywhere, so any id works; EOS is the usual choice.
        tok.pad_token = tok.eos_token
    return proc


def _check_exists(name_or_path: str) -> None:
    looks_local = name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").split("/", 1)[-1]
    if looks_local and not os.path.exists(os.path.expanduser(name_or_path)):
        raise BpoError(f"model path {name_or_path!r} does not exist; pass a local directory or a hub id "
                       "like 'llava-hf/llava-1.5-7b-hf'")


def resolve_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise BpoError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    value = DTYPES[name]
    return value if value == "auto" else getattr(torch, value)


def load_model(name_or_path: str, *, dtype: str = "float32", adapter: str | None = None,
               trust_remote_code: bool = False, revision: str | None = None,
               attn_implementation: str | None = None, device: Any = None):
    """``AutoModelForImageTextToText.from_pretrained`` (safetensors only), optionally with a peft adapter."""
    from transformers import AutoModelForImageTextToText

    _check_exists(name_or_path)
    refuse_pickled_weights(name_or_path)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype), "use_safetensors": True,
                              "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        with quiet_loading():
            model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        msg = first_line(exc)
        raise BpoError(f"cannot load model {name_or_path!r}: {msg}") from None
    if adapter:
        model = attach_adapter(model, adapter)
    if device is not None:
        model.to(device)
    model.eval()
    return model


def attach_adapter(model, adapter: str, *, trainable: bool = False):
    from peft import PeftModel

    if not os.path.exists(os.path.join(adapter, "adapter_config.json")):
        raise BpoError(f"adapter {adapter!r} has no adapter_config.json; pass the folder `bpo train` saved "
                       "(<output_dir>/adapter)")
    if not os.path.exists(os.path.join(adapter, "adapter_model.safetensors")):
        # peft would torch.load an adapter_model.bin (a pickle); bpo loads safetensors only.
        from bpo.io import pickled_weights_error

        if os.path.exists(os.path.join(adapter, "adapter_model.bin")):
            raise pickled_weights_error(os.path.join(adapter, "adapter_model.bin"), "adapter")
        raise BpoError(f"adapter {adapter!r} has no adapter_model.safetensors; pass the folder `bpo train` saved "
                       "(<output_dir>/adapter)")
    import pickle

    try:
        with quiet_loading():
            return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    except pickle.UnpicklingError as exc:
        from bpo.io import pickled_weights_error

        raise pickled_weights_error(adapter, "adapter", exc) from None


def load(name_or_path: str, **kwargs):
    """(model, processor) in one call."""
    proc_kwargs = {k: kwargs[k] for k in ("trust_remote_code", "revision") if k in kwargs}
    processor = load_processor(name_or_path, **proc_kwargs)
    model = load_model(name_or_path, **kwargs)
    return model, processor
