"""The typed config of ``bpo train``: one dataclass per section, YAML + ``key=value`` overrides.

Example: ``bpo train --config configs/train/llava15_7b_bpo.yaml optim.lr=1e-6 run.output_dir=runs/x``
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bpo.config import option
from bpo.errors import BpoError


@dataclass
class ModelSection:
    name: str = option("", help="hub id or local path of an image-text-to-text model (AutoModelForImageTextToText)")
    adapter: str | None = option(None, help="start from this peft adapter (e.g. an SFT LoRA); merged into the "
                                            "policy start point and the reference")
    dtype: str = option("float32", help="weights dtype on load", choices=("float32", "bfloat16", "float16"))
    trust_remote_code: bool = option(False, help="allow model code from the hub (off unless you trust it)")
    attn_implementation: str | None = option(None, help="e.g. sdpa, eager, flash_attention_2")


@dataclass
class DataSection:
    train: str = option("", help="preference records JSONL (bpo format; see `bpo data import` for others)")
    image_root: str | None = option(None, help="directory that record image paths are relative to")
    max_length: int = option(2048, help="max tokens of prompt (image tokens included) + response")
    on_overlength: str = option("drop", help="over-long records: drop (reported by id), error, or "
                                             "truncate_response (never the prompt or its images)",
                                choices=("drop", "error", "truncate_response"))
    on_error: str = option("raise", help="broken records (bad image, schema): raise, or skip and count",
                           choices=("raise", "skip"))
    sources: list[str] = option(default_factory=list, help="use only negatives from these sources (empty = all)")
    max_negatives: int = option(0, help="keep at most this many negatives per record (0 = all)")
    subset_fraction: float = option(1.0, help="train on this fraction of records (data-size scaling)")
    subset_seed: int = option(0, help="seed of the subset draw (fixed across runs to compare sizes)")
    group_by_length: bool = option(True, help="sort within buckets of batches by length to cut padding")


@dataclass
class LossSection:
    type: str = option("sigmoid", help="sigmoid (DPO/BPO), ipo, hinge, or sft (NLL on chosen only)",
                       choices=("sigmoid", "ipo", "hinge", "sft"))
    beta: float = option(0.1, help="beta of DPO (inverse temperature of the implicit reward)")
    reduction: str = option("sum", help="combine the K negatives' losses of an example by sum or mean",
                            choices=("sum", "mean"))
    source_weights: dict[str, float] = option(default_factory=dict,
                                              help="per-negative-source weights, e.g. {weakened: 1, injected: 0.5}")
    sft_weight: float = option(0.0, help="weight of an extra per-token NLL term on chosen (0 = off)")
    label_smoothing: float = option(0.0, help="conservative DPO epsilon (sigmoid only)")
    reference: str = option("base", help="pi_ref: base = the model without the trained LoRA (model.name with "
                                         "model.adapter merged); start = the policy as training starts, i.e. "
                                         "with lora.init_from (iterative DPO: the previous round's policy), "
                                         "scored once into the reference cache before the first step",
                            choices=("base", "start"))


@dataclass
class LoraSection:
    enabled: bool = option(True, help="train LoRA adapters (False = full fine-tuning of the language model)")
    r: int = option(64, help="LoRA rank")
    alpha: int = option(16, help="LoRA alpha")
    dropout: float = option(0.05, help="LoRA dropout")
    target_modules: list[str] = option(default_factory=lambda: ["all-linear"],
                                       help="'all-linear' = every nn.Linear of the language model (not lm_head, "
                                            "not the vision tower), or explicit module-name suffixes")
    train_projector: bool = option(False, help="also train the multimodal projector in full; the reference keeps "
                                               "a frozen copy of the original (the paper's code shared it by "
                                               "accident, so its reference drifted)")
    train_vision: bool = option(False, help="unfreeze the vision tower (full fine-tuning only)")
    init_from: str | None = option(None, help="continue training this saved LoRA adapter (e.g. the previous "
                                              "round's <output_dir>/adapter) instead of a fresh one; its rank, "
                                              "alpha and targets are used, lora.r/alpha/target_modules ignored")


@dataclass
class OptimSection:
    lr: float = option(2e-6, help="peak learning rate (AdamW)")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    betas: list[float] = option(default_factory=lambda: [0.9, 0.999], help="AdamW betas")
    warmup_ratio: float = option(0.03, help="share of steps for linear warm-up (ignored if warmup_steps > 0)")
    warmup_steps: int = option(0, help="warm-up steps")
    scheduler: str = option("cosine", help="cosine, linear or constant after warm-up",
                            choices=("cosine", "linear", "constant"))
    max_grad_norm: float = option(1.0, help="gradient clipping (0 = off)")


@dataclass
class RunSection:
    output_dir: str = option("runs/bpo", help="where checkpoints, metrics.jsonl, TensorBoard logs and the "
                                              "adapter go")
    epochs: float = option(1.0, help="passes over the data")
    max_steps: int = option(0, help="stop after this many optimizer steps (0 = use epochs)")
    batch_size: int = option(4, help="examples per device per micro-batch (an example = 1 chosen + K rejected)")
    grad_accum: int = option(1, help="micro-batches per optimizer step")
    precision: str = option("fp32", help="fp32, bf16 or fp16 autocast (accelerate mixed precision)",
                            choices=("fp32", "bf16", "fp16"))
    gradient_checkpointing: bool = option(False, help="trade compute for activation memory")
    seed: int = option(42, help="seed of data order, dropout and init")
    save_every: int = option(0, help="checkpoint every N optimizer steps (0 = only at the end)")
    keep_checkpoints: int = option(2, help="how many step checkpoints to keep")
    resume: str = option("auto", help="auto (latest checkpoint in output_dir), none, or a checkpoint path")
    log_every: int = option(1, help="write metrics every N optimizer steps")
    tensorboard: bool = option(True, help="also write TensorBoard logs under output_dir/tb")
    merge: bool = option(False, help="also save a merged full model (LoRA only) to output_dir/merged")
    fast_path: str = option("auto", help="log-prob path: auto (prompt + all responses packed in one forward where "
                                         "supported, else plain rows), packed (error if unsupported; 'shared' is "
                                         "its older name), plain (one row per response)",
                            choices=("auto", "packed", "shared", "plain"))
    ref_cache: str = option("auto", help="cached reference log-probs: auto (compute once, reuse across runs), "
                                         "off", choices=("auto", "off"))
    compile: bool = option(False, help="torch.compile the policy's forward in place (dynamic shapes; the first "
                                       "steps and each new shape bucket pay a compilation)")
    progress: bool = option(True, help="show a progress bar")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self):
        self.validate(require_paths=False)

    def validate(self, require_paths: bool = True) -> None:
        """Cross-field checks; paths are only required when a run actually starts."""
        if require_paths and not self.model.name:
            raise BpoError("model.name is required (a hub id or local path)")
        if require_paths and not self.data.train:
            raise BpoError("data.train is required (a preference JSONL)")
        if self.loss.beta <= 0:
            raise BpoError("loss.beta must be > 0")
        if not 0 < self.data.subset_fraction <= 1:
            raise BpoError("data.subset_fraction must be in (0, 1]")
        if self.run.batch_size < 1 or self.run.grad_accum < 1:
            raise BpoError("run.batch_size and run.grad_accum must be >= 1")
        if self.run.epochs <= 0 and self.run.max_steps <= 0:
            raise BpoError("set run.epochs > 0 or run.max_steps > 0")
        if self.lora.train_vision and self.lora.enabled:
            raise BpoError("lora.train_vision needs full fine-tuning (lora.enabled=false)")
        if not 0 <= self.loss.label_smoothing < 0.5:
            raise BpoError("loss.label_smoothing must be in [0, 0.5)")
        if self.loss.type != "sigmoid" and self.loss.label_smoothing:
            raise BpoError("loss.label_smoothing only applies to loss.type=sigmoid")
        if self.lora.init_from and not self.lora.enabled:
            raise BpoError("lora.init_from continues a LoRA adapter: it needs lora.enabled=true")
        if self.loss.reference == "start" and self.lora.enabled and self.run.ref_cache == "off":
            raise BpoError("loss.reference=start scores pi_ref once before training (the policy moves after "
                           "that): it needs run.ref_cache=auto")
        if self.data.max_length < 8:
            raise BpoError("data.max_length is too small")
        check_ranges(self)
        if require_paths:
            from bpo.safeguard import check_train_paths

            check_train_paths(self.data.train, self.run.output_dir, {"model.adapter": self.model.adapter})


# (key, test, what it must be): checked before any model loads, so a bad value never reaches torch.
RANGES = (
    ("optim.lr", lambda v: v > 0, "> 0"),
    ("loss.beta", lambda v: v > 0, "> 0"),
    ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optim.warmup_ratio", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("optim.max_grad_norm", lambda v: v >= 0, ">= 0 (0 = off)"),
    ("optim.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    ("run.max_steps", lambda v: v >= 0, ">= 0 (0 = use run.epochs)"),
    ("run.epochs", lambda v: v >= 0, ">= 0"),
    ("run.save_every", lambda v: v >= 0, ">= 0 (0 = only at the end)"),
    ("run.keep_checkpoints", lambda v: v >= 1, ">= 1"),
    ("run.log_every", lambda v: v >= 1, ">= 1"),
    ("data.max_negatives", lambda v: v >= 0, ">= 0 (0 = all)"),
    ("loss.sft_weight", lambda v: v >= 0, ">= 0"),
    ("loss.source_weights", lambda v: all(w >= 0 for w in v.values()), "weights >= 0"),
    ("lora.r", lambda v: v >= 1, ">= 1"),
    ("lora.alpha", lambda v: v > 0, "> 0"),
    ("lora.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
)


def check_ranges(cfg) -> None:
    import math

    for key, ok, what in RANGES:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        finite = all(math.isfinite(x) for x in (value if isinstance(value, list) else list(value.values())
                                                if isinstance(value, dict) else [value]))
        if not finite or not ok(value):
            raise BpoError(f"config key {key!r}: {value!r} is out of range; it must be {what}")
