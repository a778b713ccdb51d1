"""Two-process data-parallel training on CPU (gloo) through torchrun: the same code path as multi-GPU DDP."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PREF_ROWS


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_two_process_training(tiny_llava, image_root, tmp_path):
    data = tmp_path / "prefs.jsonl"
    rows = [dict(r, id=f"{r['id']}-{k}") for k in range(2) for r in PREF_ROWS]  # 8 examples
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc_per_node", "2", "-m", "bpo", "train", f"model.name={tiny_llava}", f"data.train={data}",
           f"data.image_root={image_root}", f"run.output_dir={out}", "run.max_steps=2", "run.batch_size=2",
           "lora.r=4", "run.progress=false", "run.tensorboard=false", "optim.lr=1e-2"]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # one writer (rank 0), each step once
    # the logged statistics cover both processes: 2 processes x 2 examples per step
    assert [m["examples"] for m in metrics] == [4, 4]
    assert (out / "adapter" / "adapter_config.json").exists()
    # without the CPU flag, a multi-process launch is refused instead of training twice into one folder
    bad = subprocess.run(cmd[:-1] + [f"run.output_dir={tmp_path / 'bad'}"],
                         env={k: v for k, v in env.items() if k != "ACCELERATE_USE_CPU"},
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "ACCELERATE_USE_CPU=true" in bad.stderr
