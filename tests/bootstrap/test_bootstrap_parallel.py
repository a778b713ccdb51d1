"""Data parallelism: two ranks (torchrun, gloo on CPU) give the same file as one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bootstrap_helpers import read_rows, record, write_jsonl

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_sampling(tiny_llava, image_root, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    rows = [record(f"d{i}", f"{i % 6}.png", "Describe the image " + "now " * (i % 3)) for i in range(7)]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    common = ["bootstrap", "weaken", "--model", tiny_llava, "--data", data, "--image-root", image_root,
              "--max-new-tokens", "6", "--batch-size", "2", "--no-progress", "--seed", "5"]
    # Both runs on the CPU (gloo), also on a GPU box: the comparison is about ranks, not devices.
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")

    def launch(prefix, out):
        proc = subprocess.run([*prefix, "-m", "bpo", *common, "--out", str(out)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-2000:]

    two, one = tmp_path / "two.jsonl", tmp_path / "one.jsonl"
    launch([torchrun, "--master_port", str(free_port()), "--nproc_per_node", "2"], two)
    assert sorted(p.name for p in tmp_path.glob("two.jsonl.shard-*.jsonl")) == \
        ["two.jsonl.shard-0.jsonl", "two.jsonl.shard-1.jsonl"]
    assert len(read_rows(f"{two}.shard-1.jsonl")) == 3  # rank 1 took input positions 1, 3, 5
    launch([sys.executable], one)
    assert read_rows(two) == read_rows(one)  # sampled answers depend on (seed, id, step) only
