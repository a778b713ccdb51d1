"""``bpo generate`` with two processes (torchrun, gloo on CPU): each record answered once, as by one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_ranks_generate_each_record_once(tiny_llava, image_root, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    images = ["red.png", "green.png", "blue.png"]
    rows = [{"id": f"q{i}", "images": [images[i % 3]],
             "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"what is {i}?"}]}]}
            for i in range(5)]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    common = ["generate", "--model", tiny_llava, "--data", str(data), "--image-root", image_root,
              "--max-new-tokens", "4", "--batch-size", "2", "--no-progress"]

    def launch(prefix, out):
        proc = subprocess.run([*prefix, "-m", "bpo", *common, "--out", str(out)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return [json.loads(line) for line in out.read_text().splitlines()]

    two = launch([torchrun, "--master_port", str(free_port()), "--nproc_per_node", "2"], tmp_path / "two.jsonl")
    assert len(list(tmp_path.glob("two.jsonl.shard-*.jsonl"))) == 2  # both ranks wrote their share
    one = launch([sys.executable], tmp_path / "one.jsonl")
    assert [r["id"] for r in two] == [f"q{i}" for i in range(5)]  # every record once, in input order
    assert [r["response"] for r in two] == [r["response"] for r in one]
