"""The sharding engines behind ``accelerate launch``: DeepSpeed ZeRO-1/2/3 and FSDP2 (DDP stays in the trainer).

What an engine changes for ``bpo train``, and where it is handled here:

- **setup**: on a CPU box (CI) accelerate must be given the gloo backend, or every process believes it is
  alone; its FSDP plugin is dropped on CPU unless the distributed type is set; DeepSpeed's CPU backend would
  compile a shared-memory all-reduce with g++ on first use (minutes) where gloo does the same job.
- **configuration**: the DeepSpeed config takes micro-batch size, accumulation and clipping from the bpo config
  (one source of truth); ZeRO-3 gathers 16-bit weights for the final save.
- **the step**: DeepSpeed owns accumulation, clipping and the optimizer step (``engine.step()`` at the
  accumulation boundary); bpo keeps its own LR schedule on the wrapped optimizer's param groups.
- **the frozen reference of full fine-tuning**: ZeRO-3 and FSDP2 shard it like the policy (an eval-only
  DeepSpeed engine / ``fully_shard``), so it costs 1/N of a copy per GPU; ZeRO-1/2 and DDP replicate it.
- **checkpoints**: ``accelerate.save_state`` in the engine's sharded format plus bpo's ``state.json`` and LR
  schedule; refused on resume with another engine or world size (sharded optimizer states do not re-split).
- **final save**: the adapter (or full model) gathered to rank 0 and written as a normal peft adapter /
  ``save_pretrained`` folder; ``run.merge`` reloads the base model on rank 0 alone (ZeRO-3's ``zero.Init``
  switched off, else rank 0 would wait forever for the others) and merges the saved adapter.

Every collective (gather, sharded forward) must run on all ranks the same number of times; the functions
here are called on every rank and say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import torch

from bpo.errors import BpoError
from bpo.models.loading import attach_adapter, load_model
from bpo.train import checkpoint as ckpt

SHARDED = ("zero1", "zero2", "zero3", "fsdp1", "fsdp2")


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


# ---- setup ---------------------------------------------------------------------------------------
def make_accelerator(mixed_precision: str):
    """``Accelerator(mixed_precision=...)``, made to really run DeepSpeed / FSDP with several CPU processes."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    use_ds, use_fsdp = _flag("ACCELERATE_USE_DEEPSPEED"), _flag("ACCELERATE_USE_FSDP")
    launched = "LOCAL_RANK" in os.environ  # by accelerate launch / torchrun, any world size
    cpu_engine = (use_ds or use_fsdp) and launched and not torch.cuda.is_available()
    if not cpu_engine:
        return Accelerator(mixed_precision=mixed_precision)
    if _flag("ACCELERATE_USE_CPU"):
        raise BpoError("DeepSpeed/FSDP on CPU: launch without --cpu / use_cpu (they turn the engine off); bpo "
                       "selects the gloo backend itself")
    if use_ds:
        _skip_shm_comm_build()
    acc = Accelerator(mixed_precision=mixed_precision, kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    if use_fsdp and acc.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU):
        # accelerate keeps its FSDP plugin only for GPU-like device types; without this the run would train
        # unsharded copies under an FSDP config and say nothing.
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()  # read from the env that `accelerate launch` set
        if mixed_precision != "no":
            plugin.set_mixed_precision(mixed_precision)
        from accelerate.state import PartialState

        acc.state.fsdp_plugin = plugin
        acc.state.distributed_type = DistributedType.FSDP
        PartialState().distributed_type = DistributedType.FSDP  # barriers and gather_object read this one
    return acc


def _skip_shm_comm_build() -> None:
    """DeepSpeed's CPU backend compiles a shared-memory all-reduce (g++, ~100 s) unless it is marked unusable."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def engine_name(acc) -> str:
    """single, ddp, zero1/zero2/zero3 or fsdp1/fsdp2: what the checkpoint format and the reference depend on."""
    from accelerate.utils import DistributedType

    kind = acc.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return f"zero{acc.state.deepspeed_plugin.zero_stage}"
    if kind == DistributedType.FSDP:
        return f"fsdp{acc.state.fsdp_plugin.fsdp_version}"
    return "ddp" if acc.num_processes > 1 else "single"


def is_sharded(name: str) -> bool:
    return name in SHARDED


def is_deepspeed(name: str) -> bool:
    return name.startswith("zero")


def check_supported(name: str, cfg) -> None:
    """Combinations that cannot work, refused before any model is loaded."""
    if name == "zero3" and cfg.model.adapter:
        raise BpoError("model.adapter under ZeRO-3: the start adapter cannot be merged into partitioned weights; "
                       "merge it first (PeftModel.from_pretrained(...).merge_and_unload().save_pretrained(dir)) "
                       "and set model.name to that folder")
    if name == "fsdp1":
        raise BpoError("FSDP1 is not supported by bpo train (its full state dict crashed on CPU and it needs "
                       "use_orig_params for LoRA); set fsdp_version: 2 in the accelerate config")


def configure_deepspeed(acc, cfg) -> None:
    """The DeepSpeed config takes batch size, accumulation and clipping from the bpo config."""
    plugin = acc.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.run.batch_size
    ds["gradient_accumulation_steps"] = cfg.run.grad_accum
    ds["train_batch_size"] = cfg.run.batch_size * cfg.run.grad_accum * acc.num_processes
    ds["gradient_clipping"] = cfg.optim.max_grad_norm
    plugin.gradient_accumulation_steps = cfg.run.grad_accum
    acc.gradient_accumulation_steps = cfg.run.grad_accum
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("stage") == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True


def configure_fsdp(acc, model) -> None:
    """Wrap every transformer block that exists: a VLM's ``_no_split_modules`` lists classes of sub-models it
    may not contain (LLaVA names CLIP's text embeddings), and accelerate refuses a missing one."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = acc.state.fsdp_plugin
    if plugin.auto_wrap_policy is transformer_auto_wrap_policy and plugin.transformer_cls_names_to_wrap is None:
        present = {type(m).__name__ for m in model.modules()}
        plugin.transformer_cls_names_to_wrap = [n for n in getattr(model, "_no_split_modules", None) or ()
                                                if n in present]


def prepare_reference(acc, name: str, ref_model):
    """The frozen reference copy, placed the way the engine needs it (called on every rank)."""
    if ref_model is None:
        return None
    if name == "zero3":
        return _zero3_eval_engine(acc, ref_model)
    if name == "fsdp2":
        return _fsdp2_shard_frozen(acc, ref_model)
    return ref_model.to(acc.device)  # single, DDP, ZeRO-1/2: a replica per process


def _zero3_eval_engine(acc, model):
    import deepspeed

    ds = acc.state.deepspeed_plugin.deepspeed_config
    zero = ds.get("zero_optimization", {})
    config = {"train_micro_batch_size_per_gpu": ds["train_micro_batch_size_per_gpu"],
              "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3, "offload_param": zero.get("offload_param", {"device": "none"})}}
    for key in ("bf16", "fp16"):
        if ds.get(key, {}).get("enabled") in (True, "true"):
            config[key] = {"enabled": True}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def _fsdp2_shard_frozen(acc, model):
    from torch.distributed.fsdp import fully_shard

    model.to(acc.device)
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    return model.eval()


def load_reference_copy(cfg):
    """ZeRO-3 full fine-tuning: a second ``from_pretrained`` (partitioned by ``zero.Init`` on every rank)."""
    model = load_model(cfg.model.name, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code,
                       attn_implementation=cfg.model.attn_implementation)
    return model.requires_grad_(False).eval()


def backward(engine, loss: torch.Tensor, sync: bool) -> None:
    """DeepSpeed: accumulate until ``sync``, then clip and step inside the engine (bpo divides the loss)."""
    engine.set_gradient_accumulation_boundary(sync)
    engine.backward(loss, scale_wrt_gas=False)
    if sync:
        engine.step()


# ---- checkpoints ---------------------------------------------------------------------------------
def save_checkpoint(acc, name: str, out_dir: Path, *, scheduler, state: dict, keep: int) -> Path | None:
    """Sharded engine state + bpo's state.json, written to a temp folder and renamed (called on every rank)."""
    out_dir = Path(out_dir)
    final = out_dir / f"{ckpt.PREFIX}{state['global_step']}"
    tmp = out_dir / f".tmp-{ckpt.PREFIX}{state['global_step']}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    # LoRA: DeepSpeed would also write every frozen base weight at every checkpoint.
    kwargs = {"exclude_frozen_parameters": True} if is_deepspeed(name) else {}
    acc.save_state(str(tmp), **kwargs)
    acc.wait_for_everyone()
    if acc.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        state = dict(state, engine=name, world_size=acc.num_processes)
        (tmp / "state.json").write_text(json.dumps(state, indent=2))  # last: its presence marks a complete save
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        ckpt._prune(out_dir, keep)
    acc.wait_for_everyone()
    return final


def check_resumable(path: Path, state: dict, name: str, world: int) -> None:
    """A checkpoint resumes only under the engine and world size that wrote it (every rank checks the same)."""
    saved = state.get("engine")  # absent: the single-process / DDP format
    now = name if is_sharded(name) else None
    if saved != now:
        raise BpoError(f"{path}: checkpoint was written under {saved or 'single-process/DDP'}, this run uses "
                       f"{now or name}; resume with the same accelerate config, or start over with "
                       "run.resume=none")
    saved_world = state.get("world_size")
    if saved_world is not None and saved_world != world:
        raise BpoError(f"{path}: checkpoint was written by {saved_world} processes, this run has {world}; the "
                       "data position (and any sharded optimizer state) belongs to that world size; resume with "
                       f"--num_processes {saved_world}, or start over with run.resume=none")


def load_checkpoint(acc, name: str, path: Path, *, scheduler) -> dict:
    """Restore engine state (weights, sharded optimizer, per-rank RNG) and the LR schedule (every rank)."""
    kwargs = {"load_module_strict": False} if is_deepspeed(name) else {}
    acc.load_state(str(path), **kwargs)
    scheduler.load_state_dict(torch.load(Path(path) / "scheduler.pt", weights_only=True))
    return json.loads((Path(path) / "state.json").read_text())


# ---- final save ----------------------------------------------------------------------------------
def gather_trainable(acc, name: str, prepared) -> dict[str, torch.Tensor]:
    """Full (unsharded) CPU copies of every trainable parameter, on every rank (collective)."""
    model = acc.unwrap_model(prepared)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ctx = contextlib.nullcontext()
    if name == "zero3":
        import deepspeed

        ctx = deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None)
    out = {}
    with ctx:
        for n, p in named:
            t = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2: a DTensor shard
            out[n] = t.detach().cpu().clone()
    return out


@contextlib.contextmanager
def plain_loading(acc, name: str):
    """``from_pretrained`` on one rank: switch ZeRO-3's ``zero.Init`` off, or it waits for the other ranks."""
    if name != "zero3":
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        acc.state.deepspeed_plugin.set_deepspeed_weakref()


def save_final(trainer) -> dict:
    """Adapter / full model gathered and written by rank 0 (called on every rank; returns the paths)."""
    acc, cfg, out = trainer.acc, trainer.cfg, trainer.out
    name = trainer.engine
    model = acc.unwrap_model(trainer.policy)
    result = {}
    if cfg.lora.enabled:
        weights = gather_trainable(acc, name, trainer.policy)
        if acc.is_main_process:
            model.save_pretrained(out / "adapter", state_dict=weights)
        result["adapter"] = str(out / "adapter")
        acc.wait_for_everyone()
        if cfg.run.merge:
            if acc.is_main_process:
                with plain_loading(acc, name):
                    merge_saved_adapter(cfg, out / "adapter", out / "merged", trainer.processor)
            result["merged"] = str(out / "merged")
    else:
        weights = acc.get_state_dict(trainer.policy)  # full weights on rank 0 (ZeRO-3: 16-bit gather)
        if acc.is_main_process:
            model.save_pretrained(out / "model", state_dict=weights)
            trainer.processor.save_pretrained(out / "model")
        result["model"] = str(out / "model")
    acc.wait_for_everyone()
    if acc.is_main_process:
        (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def merge_saved_adapter(cfg, adapter_dir: Path, merged_dir: Path, processor) -> None:
    """Base model (plus any start adapter) reloaded on this process, the trained adapter merged in, saved."""
    from peft import PeftModel

    base = load_model(cfg.model.name, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.adapter:
        base = attach_adapter(base, cfg.model.adapter).merge_and_unload()
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(merged_dir)
    processor.save_pretrained(merged_dir)
