"""DeepSpeed ZeRO-2 / ZeRO-3 and FSDP2 really run ``bpo train``: two CPU processes (gloo), the shipped configs.

Each engine run is compared with one plain process that sees the same examples per optimizer step
(2 processes x 1 micro-batch = 1 process x 2 accumulated micro-batches): losses to 1e-5, and the adapter
(or full model) it writes reloads with stock ``from_pretrained`` to the same log-probs. The LoRA runs are
killed (``os._exit`` on every rank) inside step 3 and resumed from the step-2 checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bpo.config import load_config
from bpo.errors import BpoError
from bpo.train.config import TrainConfig
from bpo.train.metrics import read_metrics
from tests.conftest import PREF_ROWS, free_port

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {name: REPO / "configs" / "accelerate" / f"{file}.yaml"
           for name, file in (("zero2", "zero2"), ("zero3", "zero3"), ("fsdp2", "fsdp"))}
ACCELERATE = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed not installed (pip install -e '.[deepspeed]')")
pytestmark = pytest.mark.engines

COMMON = ["lora.r=4", "lora.alpha=8", "lora.dropout=0.0", "optim.lr=5e-3", "optim.warmup_steps=0",
          "run.batch_size=2", "run.progress=false", "run.tensorboard=false", "run.seed=0", "run.max_steps=4",
          "data.group_by_length=false"]
COMPARED = ("loss", "logps/chosen", "logps/rejected", "rewards/margins", "lr")


@pytest.fixture(scope="module")
def setting(tiny_llava, image_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    data = root / "prefs.jsonl"
    # 17 examples: the reference pre-pass shares (9 + 8) need padding to equal batch counts, which ZeRO-3 and
    # FSDP2 forwards require (else a hang); training drops the odd ninth micro-batch on both sides alike.
    rows = [dict(r, id=f"{r['id']}-{k}") for k in range(5) for r in PREF_ROWS][:17]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "model": tiny_llava, "args": [f"model.name={tiny_llava}", f"data.train={data}",
                                                        f"data.image_root={image_root}", *COMMON]}


def _one_process(setting, name: str, *extra) -> Path:
    """The plain single-process run the engines must reproduce (cached per module)."""
    from bpo.train.trainer import Trainer

    out = setting["root"] / f"one-{name}"
    if not (out / "result.json").exists():
        cfg = load_config(TrainConfig, None, [*setting["args"], f"run.output_dir={out}", "run.grad_accum=2", *extra])
        Trainer(cfg, log=lambda *_: None).setup().train()
    return out


def _launch(setting, engine: str, out: Path, *extra, die_at: int | None = None):
    module = ["-m", "tests.train.dying_train", str(die_at)] if die_at else ["-m", "bpo", "train"]
    cmd = [ACCELERATE, "launch", "--config_file", str(CONFIGS[engine]), "--num_processes", "2", "--main_process_port", str(free_port()),
           "--mixed_precision", "no", *module, *setting["args"], f"run.output_dir={out}", *extra]
    # A cache home per run: the engine's own pre-pass computes the reference log-probs (each rank its share).
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               BPO_HOME=str(out.parent / f"{out.name}-home"))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def _assert_same_curve(a: Path, b: Path, tol: float = 1e-5):
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    assert [r["examples"] for r in rb] == [4, 4, 4, 4]  # statistics merged over both processes
    for x, y in zip(ra, rb):
        for key in COMPARED:
            assert abs(x[key] - y[key]) <= tol, (x["step"], key, x[key], y[key])
        assert abs(x["grad_norm"] - y["grad_norm"]) <= 1e-4 * max(1.0, x["grad_norm"])


def _logps(model_dir: str, examples, pad_id, adapter: str | None = None):
    from bpo.models.loading import load_model
    from bpo.models.logprobs import example_logps

    with torch.no_grad():
        return example_logps(load_model(model_dir, adapter=adapter), examples, pad_id)[0]


def _examples(setting):
    from bpo.data.records import read_records
    from bpo.models.encoding import Encoder
    from bpo.models.loading import load_processor

    proc = load_processor(setting["model"])
    image_root = next(a.split("=", 1)[1] for a in setting["args"] if a.startswith("data.image_root="))
    data = next(a.split("=", 1)[1] for a in setting["args"] if a.startswith("data.train="))
    enc = Encoder(proc, image_root)
    return [enc.encode(r) for r in list(read_records(data))[:4]], proc.tokenizer.pad_token_id


@pytest.mark.slow
@needs_deepspeed
@pytest.mark.parametrize("engine", ["zero2", "zero3", "fsdp2"])
def test_lora_killed_and_resumed_equals_one_process(engine, setting):
    merge = engine == "zero3"  # the hard case: the base reloads on rank 0 alone, zero.Init switched off
    one = _one_process(setting, "lora", *(["run.merge=true"] if merge else []))
    out = setting["root"] / f"{engine}-lora"
    died = _launch(setting, engine, out, "run.save_every=2", die_at=3)
    assert died.returncode != 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"], died.stderr[-3000:]
    state = json.loads((out / "checkpoint-2" / "state.json").read_text())
    assert (state["engine"], state["world_size"]) == (engine, 2)
    done = _launch(setting, engine, out, "run.save_every=2", *(["run.merge=true"] if merge else []))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout and "checkpoint-2" in done.stdout
    assert "17 computed" in died.stdout  # the engine's pre-pass scored every record (the resume reuses them)
    _assert_same_curve(one, out)
    # the gathered adapter is a normal peft adapter: PeftModel.from_pretrained, same log-probs
    examples, pad = _examples(setting)
    expected = _logps(setting["model"], examples, pad, adapter=str(one / "adapter"))
    assert torch.allclose(_logps(setting["model"], examples, pad, adapter=str(out / "adapter")), expected, atol=1e-5)
    if merge:
        assert torch.allclose(_logps(str(out / "merged"), examples, pad), expected, atol=1e-5)


@pytest.mark.slow
@needs_deepspeed
@pytest.mark.parametrize("engine", ["zero3", "fsdp2"])
def test_full_finetune_with_sharded_reference_equals_one_process(engine, setting):
    # run.ref_cache=off: the sharded frozen copy scores the reference at every step
    extra = ["lora.enabled=false", "run.ref_cache=off"]
    one = _one_process(setting, "full", *extra)
    out = setting["root"] / f"{engine}-full"
    done = _launch(setting, engine, out, *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_curve(one, out)
    examples, pad = _examples(setting)
    assert torch.allclose(_logps(str(out / "model"), examples, pad), _logps(str(one / "model"), examples, pad),
                          atol=1e-4)


@pytest.mark.slow
@needs_deepspeed
def test_single_process_refuses_an_engine_checkpoint(setting):
    from bpo.train.trainer import Trainer

    ckpt = setting["root"] / "zero2-lora" / "checkpoint-2"
    if not (ckpt / "state.json").exists():
        pytest.skip("needs the ZeRO-2 run of test_lora_killed_and_resumed_equals_one_process")
    cfg = load_config(TrainConfig, None, [*setting["args"], f"run.output_dir={setting['root'] / 'refused'}",
                                          f"run.resume={ckpt}"])
    with pytest.raises(BpoError, match="written under zero2, this run uses single"):
        Trainer(cfg, log=lambda *_: None).setup().train()


def test_shipped_configs_are_the_tested_engines():
    import yaml

    zero2, zero3, fsdp = (yaml.safe_load(CONFIGS[k].read_text()) for k in ("zero2", "zero3", "fsdp2"))
    assert (zero2["deepspeed_config"]["zero_stage"], zero3["deepspeed_config"]["zero_stage"]) == (2, 3)
    assert zero3["deepspeed_config"]["zero3_init_flag"] is True  # every rank loads, partitioned while loading
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_version"] == 2
    assert not any(c.get("use_cpu") for c in (zero2, zero3, fsdp))  # --cpu would switch the engine off


def test_resume_refuses_another_engine_or_world_size(tmp_path):
    from bpo.train.engines import check_resumable

    path = tmp_path / "checkpoint-2"
    check_resumable(path, {"engine": "zero3", "world_size": 2}, "zero3", 2)
    check_resumable(path, {"global_step": 2}, "single", 1)  # an older single-process checkpoint
    with pytest.raises(BpoError, match="written by 2 processes, this run has 4.*--num_processes 2"):
        check_resumable(path, {"engine": "zero3", "world_size": 2}, "zero3", 4)
    with pytest.raises(BpoError, match="written under zero2, this run uses fsdp2"):
        check_resumable(path, {"engine": "zero2", "world_size": 2}, "fsdp2", 2)
    with pytest.raises(BpoError, match="written under single-process/DDP, this run uses zero3"):
        check_resumable(path, {"world_size": 2}, "zero3", 2)
    with pytest.raises(BpoError, match="written by 1 processes, this run has 2"):
        check_resumable(path, {"world_size": 1}, "ddp", 2)
