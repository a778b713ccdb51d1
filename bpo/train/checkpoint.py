"""Exact-resume checkpoints: trainable weights (safetensors), optimizer, scheduler, RNG, data position.

Loading uses ``torch.load(weights_only=True)``: a checkpoint can carry tensors and plain containers
only, never pickled code.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from bpo.errors import BpoError
from bpo.io import load_tensors

PREFIX = "checkpoint-"


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out_dir: Path, *, model, optimizer, scheduler, state: dict, keep: int = 2) -> Path:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    final = out_dir / f"{PREFIX}{state['global_step']}"
    tmp = out_dir / f".tmp-{PREFIX}{state['global_step']}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    py_state = random.getstate()
    state = dict(state, python_rng=[py_state[0], list(py_state[1]), py_state[2]])
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)  # atomic: a kill leaves either the old set of checkpoints or the new one
    _prune(out_dir, keep)
    return final


def _prune(out_dir: Path, keep: int) -> None:
    ckpts = list_checkpoints(out_dir)
    for old in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
             and (p / "state.json").exists() and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def find_resume(out_dir: Path, resume: str) -> Path | None:
    if resume == "none":
        return None
    if resume == "auto":
        ckpts = list_checkpoints(out_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if not (path / "state.json").exists():
        raise BpoError(f"run.resume={resume!r} is not a checkpoint directory (no state.json)")
    return path


def load_checkpoint(path: Path, *, model, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    path = Path(path)
    try:
        weights = load_file(str(path / "trainable.safetensors"))
    except (OSError, ValueError, RuntimeError) as exc:  # missing, truncated or not safetensors
        raise BpoError(f"{path / 'trainable.safetensors'}: unreadable checkpoint weights ({str(exc).splitlines()[0]}); "
                       "resume from another checkpoint or run.resume=none") from None
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise BpoError(f"{path}: checkpoint does not match this model (unknown parameter {missing[0]!r}); "
                       "resume with the same model and LoRA settings, or run.resume=none")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
    optimizer.load_state_dict(load_tensors(path / "optimizer.pt"))
    scheduler.load_state_dict(load_tensors(path / "scheduler.pt"))
    rng = load_tensors(path / "rng.pt")
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = json.loads((path / "state.json").read_text())
    py = state.pop("python_rng")
    random.setstate((py[0], tuple(py[1]), py[2]))
    return state
