"""Reference log-probs computed once, stored on disk, reused across runs and seeds.

pi_ref never changes during DPO/BPO training, yet peers run a reference forward every step (TRL's
``precompute_ref_log_probs`` keeps the values only for one run, in memory). Here a pre-pass scores
every (record, response) once with the reference network (no grad, adapters off or the frozen
copy) and writes ``[1 + K]`` summed log-probs per record under
``bpo.paths.cache_dir("ref_logps")/<fingerprint>/``. Training then runs no reference forward.

Two keys protect the values:

- the **fingerprint** (directory name) hashes everything global that changes pi_ref or the token
  sequences: model files (content, not mtime) or hub commit, start adapter, chat template,
  tokenizer vocabulary, image processor settings, data file hash, max_length, on_overlength,
  negative selection, dtype and precision;
- every row also carries a **content key** of the exact encoded example (prompt ids, response ids,
  vision tensors, per-token extras), so a changed image file or a record edited in place is
  recomputed instead of silently reused.

Rows are appended per batch with fsync to a per-process part file, so a killed pre-pass resumes
where it stopped and several processes (or runs) never write the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import torch

from bpo.io import atomic_write, file_sha256, stable_hash
from bpo.models.identity import dir_digest, model_identity
from bpo.models.logprobs import to_device
from bpo.paths import cache_dir

FORMAT_VERSION = 1


# ---- content hashes ---------------------------------------------------------------------------------
def processor_identity(processor) -> dict:
    """What of the processor changes token ids or pixels: template, vocabulary, image settings."""
    tok = processor.tokenizer
    template = getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)
    vocab = sorted(tok.get_vocab().items())
    image_proc = getattr(processor, "image_processor", None)
    image_cfg = image_proc.to_dict() if hasattr(image_proc, "to_dict") else None
    return {"chat_template": template, "vocab": stable_hash(vocab),
            "special": stable_hash(sorted(map(str, tok.all_special_tokens))),
            "image_processor": stable_hash(image_cfg), "class": type(processor).__name__}


def reference_fingerprint(cfg, processor, model=None) -> tuple[str, dict]:
    """(hex digest, ingredients) of everything global that pi_ref log-probs depend on."""
    ingredients = {
        "format": FORMAT_VERSION,
        "model": model_identity(cfg.model.name, model),
        "adapter": dir_digest(cfg.model.adapter) if cfg.model.adapter else None,
        "processor": processor_identity(processor),
        "data_sha256": file_sha256(cfg.data.train),
        "max_length": cfg.data.max_length,
        "on_overlength": cfg.data.on_overlength,
        "sources": sorted(cfg.data.sources),
        "max_negatives": cfg.data.max_negatives,
        "dtype": cfg.model.dtype,
        "precision": cfg.run.precision,
        "attn_implementation": cfg.model.attn_implementation,
    }
    if cfg.loss.reference == "start" and cfg.lora.enabled:  # pi_ref = base + init adapter
        ingredients["reference_start"] = dir_digest(cfg.lora.init_from) if cfg.lora.init_from else None
    if cfg.run.precision == "bf16":  # frozen weights are stored in bf16 since then: other reference values
        ingredients["frozen_weights"] = "bfloat16"
    if cfg.run.precision != "fp32":  # pi_ref computed under the run's autocast since then (it was outside it)
        ingredients["reference_autocast"] = True
    return stable_hash(ingredients), ingredients


def example_key(ex) -> str:
    """Content key of one encoded example: exactly what the reference forward sees."""
    h = hashlib.sha256()
    h.update(json.dumps([ex.prompt_ids, ex.response_ids, ex.token_extras], sort_keys=True).encode())
    for name in sorted(ex.vision):
        t = ex.vision[name]
        if torch.is_tensor(t):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(f"{name}|{t!r}".encode())
    return h.hexdigest()


# ---- the cache --------------------------------------------------------------------------------------
class ReferenceCache:
    """Reference log-probs of one fingerprint: ``content key -> [1 + K]`` floats."""

    def __init__(self, root: str | os.PathLike, fingerprint: str, ingredients: dict | None = None):
        self.dir = Path(root) / fingerprint[:24]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        meta = self.dir / "fingerprint.json"
        if ingredients is not None and not meta.exists():
            with atomic_write(meta) as fh:
                json.dump({"fingerprint": fingerprint, "ingredients": ingredients}, fh, indent=1)
        self.values: dict[str, list[float]] = {}
        self._keys: dict[int, str] = {}  # id(example) -> content key
        self._part: Path | None = None
        self.computed = 0  # examples scored by the last pre-pass (0 = everything was cached)
        self.reload()

    def reload(self) -> None:
        """Read every part file; a torn last line (killed writer) is ignored and recomputed."""
        values = {}
        for part in sorted(self.dir.glob("part-*.jsonl")):
            with open(part, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                        values[row["key"]] = [float(x) for x in row["logps"]]
                    except (ValueError, KeyError, TypeError):
                        continue
        self.values = values

    def attach(self, examples) -> list[int]:
        """Remember each example's content key; return the indices not cached yet."""
        todo = []
        for i, ex in enumerate(examples):
            key = self._keys.get(id(ex)) or example_key(ex)
            self._keys[id(ex)] = key
            if len(self.values.get(key, ())) != ex.n_responses:
                todo.append(i)
        return todo

    def add(self, examples, logps: torch.Tensor) -> None:
        """Append one batch of rows (one write + fsync) to this process's part file."""
        if self._part is None:
            self._part = self.dir / f"part-{uuid.uuid4().hex[:12]}.jsonl"
        lines = []
        for b, ex in enumerate(examples):
            key = self._keys.get(id(ex)) or example_key(ex)
            vals = [float(v) for v in logps[b, : ex.n_responses].tolist()]
            self.values[key] = vals
            lines.append(json.dumps({"id": ex.id, "key": key, "logps": vals}) + "\n")
        with open(self._part, "a", encoding="utf-8") as fh:
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())

    def lookup(self, examples, device=None) -> torch.Tensor:
        """``[B, 1 + Kmax]`` reference log-probs (0 where an example has fewer responses)."""
        width = max(ex.n_responses for ex in examples)
        out = torch.zeros((len(examples), width), dtype=torch.float32)
        for b, ex in enumerate(examples):
            key = self._keys.get(id(ex)) or example_key(ex)
            vals = self.values.get(key)
            if vals is None or len(vals) != ex.n_responses:
                raise KeyError(f"record {ex.id}: no cached reference log-probs")
            out[b, : len(vals)] = torch.tensor(vals, dtype=torch.float32)
        return to_device(out, device) if device is not None else out


def fill_cache(cache: ReferenceCache, examples, todo: list[int], compute, batch_size: int, *,
               progress: bool = False) -> int:
    """Score ``examples[i] for i in todo`` with ``compute(batch) -> [B, W]`` and store them.

    Batches are cut from the length-sorted list (no grad, so the least padding is all that matters).
    Returns how many examples were computed.
    """
    from tqdm.auto import tqdm

    order = sorted(todo, key=lambda i: -examples[i].total_tokens())
    bar = tqdm(total=len(order), desc="reference log-probs", unit="ex", disable=not progress)
    for s in range(0, len(order), batch_size):
        batch = [examples[i] for i in order[s:s + batch_size]]
        with torch.no_grad():
            lp = compute(batch)
        cache.add(batch, lp.detach().float().cpu())
        bar.update(len(batch))
    bar.close()
    return len(order)


def build_reference_cache(cfg, processor, model, examples, compute, acc, *, sharded: bool = False,
                          log=print) -> ReferenceCache:
    """The pre-pass: reuse cached rows, compute the missing ones with ``compute(batch) -> [B, W]``, return the cache.

    ``model`` is the (unwrapped) policy, read only for its identity in the fingerprint; ``acc`` the
    ``Accelerator`` (barriers, rank, device). Each process computes its share of the missing examples; all of
    them then read every part file. ``sharded``: the reference forward is collective (ZeRO / FSDP).
    """
    fingerprint, ingredients = reference_fingerprint(cfg, processor, model)
    cache = ReferenceCache(cache_dir("ref_logps"), fingerprint, ingredients)
    todo = cache.attach(examples)
    acc.wait_for_everyone()  # every rank read the same part files before any rank appends to them
    mine = todo[acc.process_index::acc.num_processes]
    if sharded and todo:
        # A sharded forward is collective: every rank must run as many batches (the padding rows are
        # recomputed duplicates, identical values under the same key).
        share = -(-len(todo) // acc.num_processes)
        mine = mine + todo[: share - len(mine)]
    computed = fill_cache(cache, examples, mine, compute, cfg.run.batch_size,
                          progress=cfg.run.progress and acc.is_main_process)
    acc.wait_for_everyone()
    if todo:
        cache.reload()
        cache.attach(examples)
    cache.computed = computed
    n = len(examples)
    log(f"reference log-probs: {n - len(todo)} of {n} examples cached, {len(todo)} computed ({cache.dir})")
    return cache
