"""Two-process data-parallel training on CPU (gloo) through torchrun: the same code path as multi-GPU DDP.

The packed log-prob path runs under DDP (one forward per backward), and two processes with 2 examples each
train the same adapter as one process with 2 micro-batches of 2 (gradient accumulation) on the same batches.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PREF_ROWS, free_port


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_two_process_training(tiny_llava, image_root, tmp_path):
    data = tmp_path / "prefs.jsonl"
    rows = [dict(r, id=f"{r['id']}-{k}") for k in range(2) for r in PREF_ROWS]  # 8 examples
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--master_port", str(free_port()), "--nproc_per_node", "2", "-m", "bpo", "train", f"model.name={tiny_llava}", f"data.train={data}",
           f"data.image_root={image_root}", f"run.output_dir={out}", "run.max_steps=2", "run.batch_size=2",
           "lora.r=4", "lora.dropout=0", "run.progress=false", "run.tensorboard=false", "optim.lr=1e-2",
           "run.fast_path=packed"]  # packed or an error: no silent fallback to plain rows under DDP
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # one writer (rank 0), each step once
    # the logged statistics cover both processes: 2 processes x 2 examples per step
    assert [m["examples"] for m in metrics] == [4, 4]
    assert (out / "adapter" / "adapter_config.json").exists()
    # without the CPU flag, a multi-process launch is refused instead of training twice into one folder
    # one process, the same two batches per step as gradient accumulation: the same training
    single = [sys.executable, "-m", "bpo"] + cmd[cmd.index("train"):] + [f"run.output_dir={tmp_path / 'single'}", "run.grad_accum=2"]
    done = subprocess.run(single, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    one = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [m["examples"] for m in one] == [4, 4]
    for a, b in zip(metrics, one):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["loss"], b["loss"])
        assert "tokens/pad" in a and "tokens/pad" in b
    from safetensors.torch import load_file

    w2 = load_file(out / "adapter" / "adapter_model.safetensors")
    w1 = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    assert set(w1) == set(w2)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-4
    bad = subprocess.run(cmd + [f"run.output_dir={tmp_path / 'bad'}"],
                         env={k: v for k, v in env.items() if k != "ACCELERATE_USE_CPU"},
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "ACCELERATE_USE_CPU=true" in bad.stderr
