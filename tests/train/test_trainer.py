"""End-to-end training on tiny models: learning, exact resume, adapter reload, reference integrity."""

import json

import pytest
import torch

from bpo.cli import main as cli
from bpo.config import load_config
from bpo.data.records import read_records
from bpo.models.encoding import Encoder
from bpo.models.loading import load_model, load_processor
from bpo.models.logprobs import example_logps
from bpo.train.config import TrainConfig
from bpo.train.metrics import read_metrics
from bpo.train.modeling import reference_mode
from bpo.train.trainer import Trainer


def make_cfg(model, data, image_root, out, *extra):
    return load_config(TrainConfig, None, [
        f"model.name={model}", f"data.train={data}", f"data.image_root={image_root}", f"run.output_dir={out}",
        "lora.r=4", "lora.alpha=8", "lora.dropout=0.0", "optim.lr=5e-3", "optim.warmup_steps=0",
        "run.batch_size=2", "run.progress=false", "run.tensorboard=false", "run.seed=0", *extra])


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("which", ["llava", "qwen2vl"])
def test_every_trainable_param_changes_and_loss_falls(which, tiny_llava, tiny_qwen2vl, pref_file, image_root,
                                                      tmp_path):
    model = tiny_llava if which == "llava" else tiny_qwen2vl
    cfg = make_cfg(model, pref_file, image_root, tmp_path / "run", "run.max_steps=12", "run.batch_size=4",
                   "optim.scheduler=constant")
    tr = Trainer(cfg, log=lambda *_: None).setup()
    before = _snapshot(tr.policy)
    result = tr.train()
    after = _snapshot(tr.policy)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters that never changed: {unchanged[:5]}"
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 12
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3, [r["loss"] for r in rows]
    assert rows[-1]["rewards/accuracies"] == 1.0
    assert {"rewards/margins/weakened", "rewards/margins/injected", "rewards/margins/blind"} <= set(rows[0])
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    assert result["steps"] == 12


def test_kill_and_resume_equals_uninterrupted(tiny_llava, pref_file, image_root, tmp_path, monkeypatch):
    extra = ["run.max_steps=6", "run.batch_size=1", "run.grad_accum=2", "run.save_every=2", "lora.dropout=0.3"]
    full = Trainer(make_cfg(tiny_llava, pref_file, image_root, tmp_path / "a", *extra), log=lambda *_: None)
    full.setup().train()

    out_b = tmp_path / "b"
    calls = {"n": 0}
    real_step = Trainer._optimizer_step

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == 5:  # killed mid-step 5, after the checkpoint at step 4
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "_optimizer_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_cfg(tiny_llava, pref_file, image_root, out_b, *extra), log=lambda *_: None).setup().train()
    monkeypatch.setattr(Trainer, "_optimizer_step", real_step)
    logs = []
    Trainer(make_cfg(tiny_llava, pref_file, image_root, out_b, *extra), log=logs.append).setup().train()
    assert any("resumed from" in m and "checkpoint-4" in m for m in logs)

    a, b = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(out_b / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        for key in ("loss", "rewards/margins", "logps/chosen", "grad_norm", "lr"):
            assert abs(ra[key] - rb[key]) <= 1e-6, (ra["step"], key, ra[key], rb[key])


def test_adapter_reload_gives_identical_logps(tiny_llava, pref_file, image_root, tmp_path):
    cfg = make_cfg(tiny_llava, pref_file, image_root, tmp_path / "run", "run.max_steps=3", "lora.train_projector=true")
    tr = Trainer(cfg, log=lambda *_: None).setup()
    tr.train()
    policy = tr.acc.unwrap_model(tr.policy).eval()
    proc = load_processor(tiny_llava)
    enc = Encoder(proc, image_root)
    examples = [enc.encode(r) for r in read_records(pref_file)]
    with torch.no_grad():
        trained, _, _ = example_logps(policy, examples, proc.tokenizer.pad_token_id)
        reloaded_model = load_model(tiny_llava, adapter=str(tmp_path / "run" / "adapter"))
        reloaded, _, _ = example_logps(reloaded_model, examples, proc.tokenizer.pad_token_id)
        base, _, _ = example_logps(load_model(tiny_llava), examples, proc.tokenizer.pad_token_id)
    assert torch.allclose(trained, reloaded, atol=1e-5)
    assert not torch.allclose(trained, base, atol=1e-3)


def test_reference_keeps_original_projector(tiny_llava, pref_file, image_root, tmp_path):
    """With the projector trained, pi_ref must stay the original model (the paper's code let it drift)."""
    cfg = make_cfg(tiny_llava, pref_file, image_root, tmp_path / "run", "run.max_steps=4", "lora.train_projector=true")
    tr = Trainer(cfg, log=lambda *_: None).setup()
    examples = tr.examples
    ref_before = tr._reference_logps(examples)
    proj_before = {n: p.detach().clone() for n, p in tr.policy.named_parameters()
                   if "multi_modal_projector" in n and p.requires_grad}
    assert proj_before, "projector should be trainable"
    tr.train()
    ref_after = tr._reference_logps(examples)
    assert torch.equal(ref_before, ref_after)
    changed = [n for n, p in tr.policy.named_parameters() if n in proj_before and not torch.equal(p, proj_before[n])]
    assert changed
    with torch.no_grad(), reference_mode(tr.policy) as ref:
        base = load_model(tiny_llava)
        lp_ref, _, _ = example_logps(ref, examples, tr.processor.tokenizer.pad_token_id)
        lp_base, _, _ = example_logps(base, examples, tr.processor.tokenizer.pad_token_id)
    assert torch.allclose(lp_ref, lp_base, atol=1e-5)


def test_full_finetune_and_sft(tiny_llava, pref_file, image_root, tmp_path):
    tr = Trainer(make_cfg(tiny_llava, pref_file, image_root, tmp_path / "full", "run.max_steps=2", "lora.enabled=false",
                          "optim.lr=1e-3", "run.ref_cache=off"), log=lambda *_: None).setup()
    assert tr.ref_model is not None  # without the cache, full fine-tuning keeps a frozen copy
    vision_trainable = [n for n, p in tr.policy.named_parameters() if "vision_tower" in n and p.requires_grad]
    assert not vision_trainable
    tr.train()
    assert (tmp_path / "full" / "model" / "config.json").exists()
    cached = Trainer(make_cfg(tiny_llava, pref_file, image_root, tmp_path / "full2", "run.max_steps=1",
                              "lora.enabled=false"), log=lambda *_: None).setup()
    assert cached.ref_cache is not None and cached.ref_model is None  # freed: the cache has every value
    cached.train()
    sft = Trainer(make_cfg(tiny_llava, pref_file, image_root, tmp_path / "sft", "run.max_steps=3", "loss.type=sft"),
                  log=lambda *_: None).setup()
    sft.train()
    rows = read_metrics(tmp_path / "sft" / "metrics.jsonl")
    assert "nll/chosen" in rows[0] and "rewards/margins" not in rows[0]


def test_cli_train_bad_input_is_one_line(tiny_llava, image_root, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    rows = [
        {"id": "ok", "images": ["red.png"], "prompt": [{"role": "user", "content": [{"type": "image"},
         {"type": "text", "text": "hi"}]}], "chosen": "red", "rejected": [{"text": "blue"}]},
        {"id": "gone", "images": ["missing.png"], "prompt": [{"role": "user", "content": [{"type": "image"},
         {"type": "text", "text": "hi"}]}], "chosen": "red", "rejected": [{"text": "blue"}]},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    base = [f"model.name={tiny_llava}", f"data.train={data}", f"data.image_root={image_root}",
            f"run.output_dir={tmp_path / 'out'}", "run.max_steps=1", "run.progress=false", "lora.r=2"]
    assert cli(["train", *base]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.jsonl:3: malformed JSON" in err and "\n" not in err
    # the data is checked before any model is loaded: nothing else was printed
    assert cli(["train", *base, "data.on_error=skip"]) == 0
    out = capsys.readouterr().out
    assert "done: 1 steps" in out
    dropped = (tmp_path / "out" / "dropped.txt").read_text()
    assert "record 'gone': image 'missing.png' not found" in dropped and "bad.jsonl:3" in dropped
    assert cli(["train", *base[1:], "model.name=./does/not/exist", "data.on_error=skip"]) == 2
    assert "does not exist" in capsys.readouterr().err.strip().splitlines()[-1]
