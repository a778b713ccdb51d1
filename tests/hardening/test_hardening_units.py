"""Unit checks behind the battery: config types and ranges, pickled weights, closed pipes, silent cases."""

from __future__ import annotations

import io
import json
import pickle

import pytest
import torch

from bpo.cli import main as cli
from bpo.config import load_config
from bpo.errors import BpoError
from bpo.train.config import TrainConfig

REC = {"id": "r1", "prompt": "Describe it.", "chosen": "A cat.", "rejected": [{"text": "A cat."}]}


@pytest.mark.parametrize("override, message", [
    ("optim.lr=true", "cannot read True as float"),
    ("optim.lr=-1e-3", "'optim.lr': -0.001 is out of range; it must be > 0"),
    ("optim.lr=.nan", "'optim.lr': nan is out of range"),
    ("run.max_steps=-5", "'run.max_steps': -5 is out of range"),
    ("run.batch_size=true", "cannot read True as int"),
    ("lora.dropout=1.5", "'lora.dropout': 1.5 is out of range"),
    ("optim.betas=[0.9]", "'optim.betas'"),
    ("model.name=[a, b]", "cannot read ['a', 'b'] as str"),
    ("loss.beta=0", "loss.beta must be > 0"),
])
def test_config_types_and_ranges_fail_before_any_model(override, message):
    with pytest.raises(BpoError) as ei:
        load_config(TrainConfig, None, [override])
    assert message in str(ei.value)


def test_output_dir_may_not_be_the_training_file(tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps(REC) + "\n")
    cfg = load_config(TrainConfig, None, ["model.name=m", f"data.train={data}", f"run.output_dir={data}"])
    with pytest.raises(BpoError, match="run.output_dir .* is the input data.train"):
        cfg.validate()
    inside = tmp_path / "run" / "metrics.jsonl"
    inside.parent.mkdir()
    inside.write_text(json.dumps(REC) + "\n")
    cfg = load_config(TrainConfig, None, ["model.name=m", f"data.train={inside}", f"run.output_dir={tmp_path / 'run'}"])
    with pytest.raises(BpoError, match="lies where training writes"):
        cfg.validate()


def test_train_warns_about_rejected_identical_to_chosen(tmp_path):
    from bpo.train.trainer import Trainer

    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps(REC) + "\n")
    cfg = load_config(TrainConfig, None, ["model.name=m", f"data.train={data}", f"run.output_dir={tmp_path / 'o'}"])
    lines = []
    trainer = Trainer(cfg, log=lines.append)
    trainer._read_records()  # the cheap step before any model loads
    assert any("identical to their chosen" in line and "record 'r1'" in line for line in lines)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickled_checkpoint_is_a_one_line_error_without_torch_advice(tmp_path):
    from bpo.io import load_tensors

    path = tmp_path / "optimizer.pt"
    torch.save({"state": _Evil()}, path)
    with pytest.raises(BpoError) as ei:
        load_tensors(path)
    msg = str(ei.value)
    assert "pickled Python objects" in msg and "weights_only" not in msg and "\n" not in msg
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_tensors(tmp_path / "ok.pt")["w"], torch.ones(2))


def test_pickled_adapter_is_refused(tmp_path):
    from bpo.models.loading import attach_adapter

    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(BpoError, match="pickled Python objects, which bpo never loads"):
        attach_adapter(torch.nn.Linear(1, 1), str(tmp_path))


def test_hf_judge_loads_safetensors_only(tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config

    from bpo.llm import LocalCausalLM
    from bpo.models.tiny import build_tokenizer

    tok = build_tokenizer([])
    tok.save_pretrained(tmp_path)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=len(tok))
    model = AutoModelForCausalLM.from_config(config)
    config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle: transformers 5 never writes one
    with pytest.raises(BpoError, match="pytorch_model.bin: this hf judge holds pickled Python objects"):
        LocalCausalLM(str(tmp_path), what="the hf judge").load()
    (tmp_path / "pytorch_model.bin").rename(tmp_path / "weights.dat")  # no pickle to point at: still refused
    with pytest.raises(BpoError, match="cannot load the hf judge"):
        LocalCausalLM(str(tmp_path), what="the hf judge").load()


def test_closed_pipe_exits_quietly(tmp_path, monkeypatch, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(REC) + "\n")

    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", Closed())
    assert cli(["data", "stats", str(data)]) == 141
    assert "Traceback" not in capsys.readouterr().err


def test_safety_build_where_every_row_fails_exits_non_zero(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("not json\n" + json.dumps({"chosen": 3, "rejected": 4}) + "\n")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    index = tmp_path / "index.csv"
    index.write_text("entity,type,image\nObama,PER,a.png\n")
    out = tmp_path / "out.jsonl"
    rc = cli(["safety", "build", "--pairs", str(pairs), "--index", str(index), "--image-root", str(tmp_path / "img"),
              "--out", str(out), "--on-error", "skip"])
    err = capsys.readouterr().err
    assert rc == 2 and "no records built from 2 row(s) (2 bad)" in err and "pairs.jsonl:1" in err
    assert not out.exists()


def test_weaken_skip_of_a_bad_meta_record_does_not_kill_the_job(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(dict(REC, meta="oops")) + "\n")
    rc = cli(["bootstrap", "weaken", "--model", str(tmp_path / "m"), "--data", str(data), "--out",
              str(tmp_path / "o.jsonl"), "--on-error", "skip", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "'meta' must be an object" in err and "no usable records (1 skipped" in err
