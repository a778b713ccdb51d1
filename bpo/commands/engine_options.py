"""The options every engine-driven command shares: ``bpo bootstrap weaken|self|blind|inject`` and ``bpo generate``.

They are declared once, as a base config (:class:`GenerationOptions`); a command that wants another default
re-declares only that field with :func:`redefault` (same help, choices and flag), so ``bpo generate``'s greedy
512-token decoding and ``bootstrap blind``'s greedy 64 tokens are one line each, not a second copy of the option.
The engine and sampling settings are built from any such config by :func:`engine_from` and :func:`settings_from`.

No heavy import here (``bpo --help`` stays instant): torch is imported when an engine is built.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from bpo.config import option
from bpo.errors import BpoError
from bpo.models.engines import ENGINES
from bpo.models.loading import DTYPES


def redefault(cls: type, name: str, default):
    """The field ``name`` of the config ``cls`` with another default; its help, choices and flag are kept."""
    return dataclasses.field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


def need_dir(path: str | None, flag: str, what: str) -> None:
    """A folder option that must exist when the command runs (skipped by ``bpo pipeline``'s check)."""
    if path is not None and not os.path.isdir(path):
        raise BpoError(f"{flag} {path}: no such directory; pass the folder {what}")


def at_least(value, low, flag: str, example) -> None:
    if value is not None and value < low:
        raise BpoError(f"{flag} must be >= {low}, not {value}; pass e.g. {flag} {example}")


@dataclass(kw_only=True)
class GenerationOptions:
    """Model, input/output and decoding options of a resumable, data-parallel generation job."""

    model: str = option(help="model directory or hub id (image-text-to-text)")
    adapter: str | None = option(None, help="peft adapter directory to apply to --model (e.g. <train output>/adapter)")
    dtype: str = option("float32", choices=tuple(DTYPES), help="weights' dtype")
    engine: str = option("hf", choices=tuple(ENGINES.names()),
                         help="hf = transformers generate; vllm = optional, GPU only, untested in CI")
    data: str = option(help="input records (JSONL)")
    out: str = option(help="output JSONL; shards OUT.shard-<rank>.jsonl make it resumable")
    on_error: str = option("skip", choices=("skip", "raise"),
                           help="bad record (missing/corrupt image, no answer): skip and count it, or stop")
    limit: int | None = option(None, help="only the first N records (quick trials)")
    batch_size: int = option(8, help="prompts per forward pass")
    max_new_tokens: int = option(64, help="longest answer in tokens")
    temperature: float = option(1.0, help="0 = greedy")
    top_p: float = option(0.9, help="nucleus sampling mass")
    seed: int = option(0, help="answers depend only on (seed, record id), not on batch size or rank")
    stop: list[str] = option(default_factory=list, metavar="S",
                             help="stop string(s) (--stop A --stop B, or stop=A,B); the answer is cut before it")
    no_progress: bool = option(False, help="no progress bar")

    def validate(self, require_paths: bool = True) -> None:
        at_least(self.batch_size, 1, "--batch-size", 8)
        at_least(self.max_new_tokens, 1, "--max-new-tokens", 64)
        at_least(self.limit, 1, "--limit", 10)
        at_least(self.temperature, 0, "--temperature", "0 (greedy)")
        if not 0 < self.top_p <= 1:
            raise BpoError(f"--top-p must be in (0, 1], not {self.top_p}; pass e.g. --top-p 0.9 (1 = no cut)")


@dataclass(kw_only=True)
class ImageGenerationOptions(GenerationOptions):
    """:class:`GenerationOptions` for records whose images are files under a root folder."""

    image_root: str | None = option(None, help="directory the records' image paths are relative to")

    def validate(self, require_paths: bool = True) -> None:
        super().validate(require_paths)
        if require_paths:
            need_dir(self.image_root, "--image-root", "the records' image paths are relative to")


def settings_from(cfg: GenerationOptions):
    from bpo.models.generation import SamplingSettings

    return SamplingSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed, stop=tuple(cfg.stop))


def engine_from(cfg: GenerationOptions, device):
    return ENGINES.get(cfg.engine)(cfg.model, dtype=cfg.dtype, adapter=cfg.adapter,
                                   image_root=getattr(cfg, "image_root", None), batch_size=cfg.batch_size,
                                   device=device)
