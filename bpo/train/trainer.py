"""The ``bpo train`` loop on ``accelerate``: DPO / multi-negative BPO / IPO / hinge / SFT.

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` examples per process; an example
is one prompt (with its images) and 1 + K responses. The loop is deliberately plain so that what it
does is easy to audit: encode, log-probs for policy (and reference), loss, step, log, checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch

from bpo.config import to_dict
from bpo.data.records import read_records
from bpo.data.validate import identical_pairs
from bpo.errors import BpoError
from bpo.io import atomic_write
from bpo.models.encoding import Encoder, encode_all
from bpo.models.loading import load_model, load_processor
from bpo.train import checkpoint as ckpt
from bpo.train import engines
from bpo.train.config import TrainConfig
from bpo.train.data import epoch_batches, negative_matrix, select_negatives, subset
from bpo.train.losses import LOSSES, needs_reference, nll_loss
from bpo.train.metrics import MetricsLogger, StepStats
from bpo.train.modeling import count_parameters, prepare_policy
from bpo.train.reference import FROZEN_COPY, Reference, build_reference, reference_kind


def lr_lambda(total: int, warmup: int, kind: str):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


class Trainer:
    """``Trainer(cfg).setup().train()``. Every attribute is declared here; :meth:`setup` fills them, in this order."""

    def __init__(self, cfg: TrainConfig, *, log=print):
        from bpo.models.packed import LogpsPath

        cfg.validate()
        self.cfg = cfg
        self.log = log
        self.out = Path(cfg.run.output_dir)
        self.loss_fn = LOSSES.get(cfg.loss.type)
        # packed prompt + responses in one forward, or plain rows (run.fast_path); says once why it fell back
        self._logps_path = LogpsPath(cfg.run.fast_path, log=log)
        self._fp: dict | None = None  # checkpoint fingerprint, computed on first use (it hashes the data file)
        # ---- filled by setup() ----
        self.acc = None  # accelerate.Accelerator
        self.engine = "single"  # single, ddp, zero1/2/3, fsdp2 (engines.engine_name)
        self.read_errors: list = []  # records skipped while reading (data.on_error=skip)
        self.records: list = []  # after negative selection and the subset draw
        self.processor = None
        self.examples: list = []  # EncodedExample, one per usable record
        self.dropped: list[str] = []  # why each dropped record was dropped (also written to dropped.txt)
        self.lengths: list[int] = []  # tokens per example, for length-grouped batches
        self.policy = None  # prepared by accelerate (DDP / DeepSpeed / FSDP wrapper)
        self.optimizer = None
        self.scheduler = None
        self.total_steps = 0
        self.reference: Reference | None = None  # pi_ref; None when the loss reads none (SFT)

    # ---- setup -----------------------------------------------------------------------------------
    def setup(self):
        from accelerate.utils import set_seed

        cfg = self.cfg
        mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.run.precision]
        self.acc = engines.make_accelerator(mp)  # DeepSpeed/FSDP from `accelerate launch`, CPU included
        self.engine = engines.engine_name(self.acc)
        engines.check_supported(self.engine, cfg)
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.acc.num_processes == 1:
            # torchrun on a CPU box: accelerate stays single-process unless told to use the CPU backend, and
            # every process would then train alone into the same output_dir.
            raise BpoError(f"launched with WORLD_SIZE={launched} but accelerate runs a single process; on CPU set "
                           "ACCELERATE_USE_CPU=true (or use `accelerate launch --cpu`)")
        set_seed(cfg.run.seed)
        # cheap checks first: never load a 7B model to find a malformed line
        self.records, self.read_errors = self._read_records()
        # Encode before the model loads: a record the chat template or processor rejects costs no model load.
        self.processor = load_processor(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
        self.examples, self.dropped = self._load_data()
        self.lengths = [ex.total_tokens() for ex in self.examples]
        policy, frozen_copy = self._load_model()
        optimizer, self.scheduler, self.total_steps = self._build_optimizer(policy)
        self.policy, self.optimizer, frozen_copy = self._prepare(policy, optimizer, frozen_copy)
        # pi_ref: its cache (run.ref_cache=auto) is filled here, before the first step moves the policy
        self.reference = build_reference(cfg, policy=self.acc.unwrap_model(self.policy), frozen_copy=frozen_copy,
                                         score=self._logps, examples=self.examples, processor=self.processor,
                                         acc=self.acc, sharded=engines.is_sharded(self.engine), log=self.log)
        return self

    def _load_model(self):
        """(policy, frozen copy or None): the model with LoRA or its trainable parts set, not yet prepared."""
        from accelerate.utils import set_seed

        cfg = self.cfg
        model = load_model(cfg.model.name, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code,
                           attn_implementation=cfg.model.attn_implementation)
        if cfg.model.adapter:
            from bpo.models.loading import attach_adapter

            # The start adapter (e.g. SFT LoRA) becomes part of both policy and reference.
            model = attach_adapter(model, cfg.model.adapter).merge_and_unload()
        zero3 = self.engine == "zero3"
        copy = reference_kind(cfg) == FROZEN_COPY
        set_seed(cfg.run.seed)  # LoRA init from the seed alone: ZeRO-3's zero.Init load draws random numbers
        policy, frozen_copy = prepare_policy(model, cfg.lora, copy_reference=copy and not zero3,
                                             gradient_checkpointing=cfg.run.gradient_checkpointing)
        if zero3 and copy:
            frozen_copy = engines.load_reference_copy(cfg)  # partitioned by zero.Init on every rank
        policy.train()
        if cfg.run.precision == "bf16":  # frozen weights in bf16, not fp32 cast on every forward
            from bpo.train.modeling import cast_frozen

            cast_frozen(policy, torch.bfloat16)
            if frozen_copy is not None:
                frozen_copy.to(torch.bfloat16)
        if cfg.run.compile:
            from bpo.models.packed import compile_model

            compile_model(policy, log=self.log)
        trainable, total = count_parameters(policy)
        self.log(f"model {cfg.model.name}: {trainable:,} trainable of {total:,} parameters "
                 f"({'LoRA' if cfg.lora.enabled else 'full fine-tuning'}"
                 f"{', projector trained' if cfg.lora.train_projector else ''})")
        return policy, frozen_copy

    def _read_records(self) -> tuple[list, list]:
        """(training records after negative selection and the subset draw, the records skipped while reading)."""
        cfg = self.cfg
        errors: list = []
        records = list(read_records(cfg.data.train, on_error=cfg.data.on_error, errors=errors))
        records = select_negatives(records, cfg.data.sources, cfg.data.max_negatives)
        same = identical_pairs(records)  # trains, but teaches nothing: say so, as `bpo data validate` does
        if same:
            self.log(f"warning: {len(same)} rejected answer(s) identical to their chosen one; such pairs teach "
                     f"nothing (first: {same[0]})")
        return subset(records, cfg.data.subset_fraction, cfg.data.subset_seed), errors

    def _load_data(self):
        """(examples, dropped): every record encoded, the unusable ones reported and left out."""
        cfg = self.cfg
        encoder = Encoder(self.processor, cfg.data.image_root, max_length=cfg.data.max_length,
                          on_overlength=cfg.data.on_overlength, source_weights=cfg.loss.source_weights)
        skipped: list = []
        # a loss without a reference (SFT) trains on chosen alone: a record without rejected answers is usable
        examples = encode_all(encoder, self.records, on_error=cfg.data.on_error, dropped=skipped,
                              require_rejected=needs_reference(cfg.loss.type),
                              progress=cfg.run.progress and self.acc.is_main_process)
        dropped = [str(e) for e in self.read_errors + skipped]
        for msg in dropped[:10]:
            self.log(f"skipped: {msg}")
        if len(dropped) > 10:
            self.log(f"... and {len(dropped) - 10} more (all listed in {self.out / 'dropped.txt'})")
        if not examples:
            raise BpoError(f"{cfg.data.train}: no usable training records ({len(dropped)} dropped)")
        n_pairs = sum(len(ex.response_ids) - 1 for ex in examples)
        self.log(f"data: {len(examples)} examples, {n_pairs} preference pairs, {len(dropped)} dropped")
        return examples, dropped

    def _build_optimizer(self, policy):
        """(AdamW over the trainable parameters, its LR schedule, total optimizer steps)."""
        cfg = self.cfg
        params = [p for p in policy.parameters() if p.requires_grad]
        # fused: one kernel for all parameters (what HF Trainer / TRL use by default); not under DeepSpeed / FSDP,
        # which partition or wrap the parameters
        fused = {"fused": True} if self.engine in ("single", "ddp") and _fusable(params) else {}
        optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                      betas=tuple(cfg.optim.betas), **fused)
        world = self.acc.num_processes
        n_batches = len(epoch_batches(self.lengths, cfg.run.batch_size, seed=cfg.run.seed, epoch=0,
                                      group_by_length=False, world_size=world)) // world
        steps_per_epoch = max(1, math.ceil(n_batches / cfg.run.grad_accum))
        total_steps = cfg.run.max_steps or max(1, math.ceil(cfg.run.epochs * steps_per_epoch))
        warmup = cfg.optim.warmup_steps or int(cfg.optim.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, cfg.optim.scheduler))
        return optimizer, scheduler, total_steps

    def _prepare(self, policy, optimizer, frozen_copy):
        """Policy and optimizer wrapped by accelerate for the engine; the frozen copy placed (every rank)."""
        if engines.is_deepspeed(self.engine):
            engines.configure_deepspeed(self.acc, self.cfg)
        elif self.engine == "fsdp2":
            engines.configure_fsdp(self.acc, policy)
        policy, optimizer = self.acc.prepare(policy, optimizer)
        return policy, optimizer, engines.prepare_reference(self.acc, self.engine, frozen_copy)

    # Views of the reference, for tests and benches that look inside a run.
    @property
    def ref_cache(self):
        """The on-disk reference cache of this run, or None (run.ref_cache=off, or no reference)."""
        return self.reference.cache if self.reference is not None else None

    @property
    def ref_model(self):
        """The frozen copy of full fine-tuning while the reference holds one (not once it is all cached)."""
        return self.reference.frozen_copy if self.reference is not None else None

    # ---- one micro-batch -------------------------------------------------------------------------
    def _logps(self, model, examples, stats=None):
        return self._logps_path(model, examples, self.processor.tokenizer.pad_token_id, stats=stats)

    def _reference_logps(self, examples, **score_kwargs):
        """pi_ref log-probs ``[B, 1 + Kmax]``; one method, so a profiler or a test can wrap the reference pass."""
        return self.reference.logps(examples, **score_kwargs)

    def micro_step(self, examples, stats: StepStats) -> torch.Tensor:
        cfg = self.cfg
        with self.acc.autocast():
            logps, counts, valid = self._logps(self.policy, examples, stats)
        chosen, rejected = logps[:, 0], logps[:, 1:]
        if self.reference is None:  # a loss without pi_ref (SFT): per-token NLL of chosen, no rewards
            losses = self.loss_fn(chosen, rejected, None, None, chosen_tokens=counts[:, 0]).losses
            stats.add("logps/chosen", chosen)
            stats.add("nll/chosen", losses)
            return losses.mean()
        ref = self._reference_logps(examples)  # under the policy's autocast (bpo.train.reference)
        weights, sources = negative_matrix(examples, logps.shape[1], device=logps.device)
        # every loss takes every option; validate() refuses one that does not apply (label_smoothing: sigmoid)
        out = self.loss_fn(chosen, rejected, ref[:, 0], ref[:, 1:], beta=cfg.loss.beta, valid=valid[:, 1:],
                           weights=weights, reduction=cfg.loss.reduction, label_smoothing=cfg.loss.label_smoothing)
        losses = out.losses
        if cfg.loss.sft_weight:
            nll = nll_loss(chosen, counts[:, 0])
            stats.add("nll/chosen", nll)
            losses = losses + cfg.loss.sft_weight * nll
        stats.add_preference(out.chosen_rewards, out.rejected_rewards, valid[:, 1:], sources, chosen.detach(),
                             rejected.detach())
        return losses.mean()

    # ---- loop ------------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg, acc = self.cfg, self.acc
        main = acc.is_main_process
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_run_files()
        logger = MetricsLogger(self.out, tensorboard=cfg.run.tensorboard, enabled=main)
        step, epoch, micro = self._maybe_resume(logger)
        world, rank = acc.num_processes, acc.process_index
        deepspeed = engines.is_deepspeed(self.engine)  # ZeRO partitions grads: no no_sync; the engine steps
        from accelerate.utils import gather_object
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=step, desc="train", disable=not (cfg.run.progress and main))
        stats, t0, n_ex, n_pairs, accum = StepStats(), time.perf_counter(), 0, 0, 0
        last_loss = float("nan")
        while step < self.total_steps:
            batches = epoch_batches(self.lengths, cfg.run.batch_size, seed=cfg.run.seed, epoch=epoch,
                                    group_by_length=cfg.data.group_by_length, world_size=world)
            mine = batches[rank::world]
            while micro < len(mine) and step < self.total_steps:
                examples = [self.examples[i] for i in mine[micro]]
                micro += 1
                accum += 1
                sync = accum == cfg.run.grad_accum or micro == len(mine)
                ctx = acc.no_sync(self.policy) if not sync and world > 1 and not deepspeed else contextlib.nullcontext()
                with ctx:
                    loss = self.micro_step(examples, stats)
                    scaled = loss / accum_divisor(cfg.run.grad_accum, accum, micro, len(mine))
                    if deepspeed:
                        engines.backward(self.policy, scaled, sync)
                    else:
                        acc.backward(scaled)
                stats.add("loss", loss.detach().reshape(1))
                n_ex += len(examples)
                n_pairs += sum(len(e.response_ids) - 1 for e in examples)
                if not sync:
                    continue
                grad_norm = self._optimizer_step()
                step += 1
                accum = 0
                bar.update(1)
                if step % cfg.run.log_every == 0 or step == self.total_steps:
                    dt = time.perf_counter() - t0
                    merged = stats.merged(gather_object if world > 1 else None)
                    row = merged.means()
                    row["examples"] = merged.counts.get("logps/chosen", 0)  # across all processes
                    row.update(lr=self.scheduler.get_last_lr()[0], grad_norm=float(grad_norm), epoch=epoch + micro /
                               max(1, len(mine)), samples_per_s=n_ex * world / dt, pairs_per_s=n_pairs * world / dt,
                               s_per_step=dt / max(1, cfg.run.log_every))
                    last_loss = row.get("loss", last_loss)
                    logger.log(step, row)
                    bar.set_postfix(loss=f"{last_loss:.4f}")
                    stats, t0, n_ex, n_pairs = StepStats(), time.perf_counter(), 0, 0
                if cfg.run.save_every and step % cfg.run.save_every == 0 and step < self.total_steps:
                    self._save_checkpoint(step, epoch, micro)
            if micro >= len(mine):
                epoch, micro = epoch + 1, 0
        bar.close()
        logger.close()
        acc.wait_for_everyone()
        result = {"steps": step, "final_loss": last_loss, "output_dir": str(self.out)}
        if engines.is_sharded(self.engine):
            result.update(engines.save_final(self))  # gathers on every rank, rank 0 writes
        elif main:
            result.update(self._save_final())
        return result

    def _optimizer_step(self):
        """Clip, step, zero; returns the gradient norm (a tensor: read only when logged, to avoid a sync)."""
        cfg = self.cfg
        grad_norm = float("nan")
        if cfg.optim.max_grad_norm > 0:
            params = [p for p in self.policy.parameters() if p.requires_grad]
            grad_norm = self.acc.clip_grad_norm_(params, cfg.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    # ---- persistence -----------------------------------------------------------------------------
    def _fingerprint(self) -> dict:
        """What a checkpoint must match to be resumed; computed once (it hashes the data file)."""
        if self._fp is None:
            from bpo.io import file_sha256

            cfg = to_dict(self.cfg)
            self._fp = {"data_sha256": file_sha256(self.cfg.data.train), "model": cfg["model"],
                        "lora": cfg["lora"], "loss": cfg["loss"], "data": cfg["data"]}
        return self._fp

    def _write_run_files(self):
        import yaml

        with atomic_write(self.out / "config.yaml") as fh:
            yaml.safe_dump(to_dict(self.cfg), fh, sort_keys=False)
        with atomic_write(self.out / "dropped.txt") as fh:
            fh.write("".join(m + "\n" for m in self.dropped))

    def _maybe_resume(self, logger):
        path = ckpt.find_resume(self.out, self.cfg.run.resume)
        if path is None:
            if self.acc.is_main_process and (self.out / "metrics.jsonl").exists():
                (self.out / "metrics.jsonl").unlink()
            return 0, 0, 0
        engines.check_resumable(path, json.loads((path / "state.json").read_text()), self.engine,
                                self.acc.num_processes)
        if engines.is_sharded(self.engine):
            state = engines.load_checkpoint(self.acc, self.engine, path, scheduler=self.scheduler)
        else:
            state = ckpt.load_checkpoint(path, model=self.acc.unwrap_model(self.policy), optimizer=self.optimizer,
                                         scheduler=self.scheduler)
        if state.get("fingerprint") != self._fingerprint():
            raise BpoError(f"{path}: checkpoint was made with different data/model/loss settings; use a new "
                           "run.output_dir or run.resume=none")
        logger.truncate_after(state["global_step"])
        self.log(f"resumed from {path} at step {state['global_step']}")
        return state["global_step"], state["epoch"], state["micro"]

    def _save_checkpoint(self, step, epoch, micro):
        state = {"global_step": step, "epoch": epoch, "micro": micro, "fingerprint": self._fingerprint()}
        if engines.is_sharded(self.engine):  # every rank writes its shard
            engines.save_checkpoint(self.acc, self.engine, self.out, scheduler=self.scheduler, state=state,
                                    keep=self.cfg.run.keep_checkpoints)
            return
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            state["world_size"] = self.acc.num_processes
            ckpt.save_checkpoint(self.out, model=self.acc.unwrap_model(self.policy), optimizer=self.optimizer,
                                 scheduler=self.scheduler, state=state, keep=self.cfg.run.keep_checkpoints)

    def _save_final(self) -> dict:
        model = self.acc.unwrap_model(self.policy)
        out = {}
        if self.cfg.lora.enabled:
            model.save_pretrained(self.out / "adapter")
            out["adapter"] = str(self.out / "adapter")
            if self.cfg.run.merge:
                merged = model.merge_and_unload()
                merged.save_pretrained(self.out / "merged")
                self.processor.save_pretrained(self.out / "merged")
                out["merged"] = str(self.out / "merged")
        else:
            model.save_pretrained(self.out / "model")
            self.processor.save_pretrained(self.out / "model")
            out["model"] = str(self.out / "model")
        (self.out / "result.json").write_text(json.dumps(out, indent=2))
        return out


def _fusable(params) -> bool:
    """torch's fused AdamW takes floating-point CPU and CUDA tensors."""
    kinds = {(p.device.type, p.dtype) for p in params}
    return bool(kinds) and all(d in ("cpu", "cuda") and t.is_floating_point for d, t in kinds)


def accum_divisor(grad_accum: int, accum: int, micro: int, n_micro: int) -> int:
    """Divide by the number of micro-batches in *this* step (the last step of an epoch may be short)."""
    remaining_at_start = n_micro - (micro - accum)
    return min(grad_accum, remaining_at_start)
