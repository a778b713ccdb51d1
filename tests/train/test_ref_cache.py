"""The on-disk reference log-prob cache: same numbers, same training, reused, and invalidated."""

import json
import shutil

import pytest
import torch

from bpo.config import load_config
from bpo.models.loading import load_processor
from bpo.models.logprobs import example_logps
from bpo.train import ref_cache
from bpo.train.config import TrainConfig
from bpo.train.metrics import read_metrics
from bpo.train.modeling import reference_mode
from bpo.train.trainer import Trainer


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    # Other test files share one BPO_HOME per session; these tests count what gets computed.
    monkeypatch.setenv("BPO_HOME", str(tmp_path / "home"))


def _cfg(model, data, image_root, out, *extra):
    return load_config(TrainConfig, None, [
        f"model.name={model}", f"data.train={data}", f"data.image_root={image_root}", f"run.output_dir={out}",
        "lora.r=4", "lora.alpha=8", "lora.dropout=0.0", "optim.lr=5e-3", "optim.warmup_steps=0",
        "optim.scheduler=constant", "run.batch_size=2", "run.progress=false", "run.tensorboard=false",
        "run.seed=0", *extra])


class _CountForwards:
    """Count calls of the model class's forward (policy and reference passes alike)."""

    def __init__(self, monkeypatch, cls):
        self.n = 0
        real = cls.forward

        def forward(module, *args, **kwargs):
            self.n += 1
            return real(module, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", forward)


def test_cached_equals_on_the_fly_and_next_run_computes_nothing(tiny_llava, pref_file, image_root, tmp_path,
                                                                 monkeypatch):
    from transformers import LlavaForConditionalGeneration

    logs = []
    first = Trainer(_cfg(tiny_llava, pref_file, image_root, tmp_path / "a"), log=logs.append).setup()
    cache = first.ref_cache
    assert cache.computed == 4 and any("0 of 4 examples cached, 4 computed" in m for m in logs)
    cached = cache.lookup(first.examples)
    # on the fly, through the plain path (one row per response), in one batch: a different layout entirely
    with torch.no_grad(), reference_mode(first.policy, first.ref_model) as ref:
        ref.eval()
        fresh, _, valid = example_logps(ref, first.examples, first.processor.tokenizer.pad_token_id)
    assert (cached - fresh.masked_fill(~valid, 0.0)).abs().max().item() <= 1e-5
    assert (cached[~valid] == 0).all()

    counter = _CountForwards(monkeypatch, LlavaForConditionalGeneration)
    logs.clear()
    second = Trainer(_cfg(tiny_llava, pref_file, image_root, tmp_path / "b", "run.seed=7", "run.max_steps=2",
                          "data.subset_fraction=0.5"), log=logs.append).setup()
    assert counter.n == 0 and second.ref_cache.computed == 0  # other seed, subset: nothing recomputed
    assert second.ref_cache.dir == cache.dir
    second.train()
    assert counter.n == 2  # 2 micro-steps x one packed forward of the policy, no reference pass


def test_loss_trajectory_is_the_same_with_and_without_cache(tiny_llava, pref_file, image_root, tmp_path):
    runs = {}
    for mode in ("auto", "off"):
        out = tmp_path / mode
        tr = Trainer(_cfg(tiny_llava, pref_file, image_root, out, f"run.ref_cache='{mode}'", "run.max_steps=4"),
                     log=lambda *_: None).setup()
        assert (tr.ref_cache is None) == (mode == "off")
        tr.train()
        runs[mode] = read_metrics(out / "metrics.jsonl")
    with_cache, without = runs["auto"], runs["off"]
    assert len(with_cache) == len(without) == 4
    assert without[-1]["loss"] < without[0]["loss"]  # the reference matters once the policy moved
    for a, b in zip(with_cache, without):
        for key in ("loss", "rewards/margins", "rewards/chosen"):
            assert abs(a[key] - b[key]) <= 1e-5, (a["step"], key, a[key], b[key])


def _fingerprint(cfg, processor):
    return ref_cache.reference_fingerprint(cfg, processor)[0]


def test_fingerprint_changes_with_every_ingredient(tiny_llava, pref_file, image_root, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llava, model_dir)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    base = [f"model.adapter={adapter}"]

    def fp(*extra, processor=None):
        cfg = _cfg(str(model_dir), pref_file, image_root, tmp_path / "out", *base, *extra)
        return _fingerprint(cfg, processor or load_processor(str(model_dir)))

    ref = fp()
    # not ingredients: seed, output dir, optimiser, LoRA shape, subset, batch size, log-prob path
    assert fp("run.seed=3", "optim.lr=1", "lora.r=16", "data.subset_fraction=0.5", "run.batch_size=1",
              "run.fast_path=plain", "run.output_dir=elsewhere") == ref
    changed = {
        "max_length": fp("data.max_length=300"),
        "on_overlength": fp("data.on_overlength=truncate_response"),
        "sources": fp("data.sources=[weakened]"),
        "max_negatives": fp("data.max_negatives=1"),
        "dtype": fp("model.dtype=bfloat16"),
        "precision": fp("run.precision=bf16"),
        "attention": fp("model.attn_implementation=eager"),
    }
    proc = load_processor(str(model_dir))
    proc.chat_template = proc.chat_template.replace("ASSISTANT:", "ASSISTANT :")
    changed["chat template"] = fp(processor=proc)
    proc = load_processor(str(model_dir))
    proc.tokenizer.add_tokens(["<extra_token>"])
    changed["vocabulary"] = fp(processor=proc)
    proc = load_processor(str(model_dir))
    proc.image_processor.image_mean = [0.0, 0.0, 0.0]
    changed["image processor"] = fp(processor=proc)

    (adapter / "adapter_model.safetensors").write_bytes(b"weights-2")
    changed["adapter"] = fp()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    assert fp() == ref  # content, not mtime: putting the bytes back gives the old key

    weights = model_dir / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    changed["model weights"] = fp()
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    cfg_file = model_dir / "config.json"
    cfg_file.write_text(cfg_file.read_text().replace('"projector_hidden_act": "gelu"',
                                                     '"projector_hidden_act": "relu"'))
    changed["model config"] = fp()

    data = tmp_path / "prefs.jsonl"
    rows = [json.loads(line) for line in open(pref_file)]
    rows[0]["chosen"] += " !"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(str(model_dir), str(data), image_root, tmp_path / "out", *base)
    changed["data file"] = _fingerprint(cfg, load_processor(str(model_dir)))

    same = [name for name, value in changed.items() if value == ref]
    assert not same, f"fingerprint ignores: {same}"
    assert len(set(changed.values())) == len(changed)


def test_changed_image_recomputes_only_its_records(tiny_llava, pref_file, image_root, tmp_path):
    """Images are not in the data file hash: each row's content key catches an edited image."""
    from PIL import Image

    images = tmp_path / "images"
    shutil.copytree(image_root, images)
    cfg = _cfg(tiny_llava, pref_file, str(images), tmp_path / "out")
    assert Trainer(cfg, log=lambda *_: None).setup().ref_cache.computed == 4
    Image.new("RGB", (40, 32), (0, 0, 0)).save(images / "red.png")  # used by r1 and r4
    tr = Trainer(cfg, log=lambda *_: None).setup()
    assert tr.ref_cache.computed == 2
    assert sorted(ex.id for ex in tr.examples) == ["r1", "r2", "r3", "r4"]


def test_killed_prepass_resumes_and_torn_line_is_ignored(tiny_llava, pref_file, image_root, tmp_path,
                                                         monkeypatch):
    cfg = _cfg(tiny_llava, pref_file, image_root, tmp_path / "out", "run.batch_size=1")
    real_fill = ref_cache.fill_cache

    def dies_after_one(cache, examples, todo, compute, batch_size, **kw):
        real_fill(cache, examples, todo[:1], compute, batch_size, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(ref_cache, "fill_cache", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, log=lambda *_: None).setup()
    monkeypatch.setattr(ref_cache, "fill_cache", real_fill)
    parts = list((tmp_path / "home" / "ref_logps").glob("*/part-*.jsonl"))
    assert len(parts) == 1 and len(parts[0].read_text().splitlines()) == 1
    with open(parts[0], "a") as fh:
        fh.write('{"id": "r2", "key": "')  # a writer killed mid-line
    tr = Trainer(cfg, log=lambda *_: None).setup()
    assert tr.ref_cache.computed == 3
    assert tr.ref_cache.lookup(tr.examples).shape == (4, 4)


def test_cache_off_and_sft_build_nothing(tiny_llava, pref_file, image_root, tmp_path):
    for extra in ("run.ref_cache='off'", "loss.type=sft"):  # quoted: YAML reads a bare off as False
        tr = Trainer(_cfg(tiny_llava, pref_file, image_root, tmp_path / "out", extra), log=lambda *_: None).setup()
        assert tr.ref_cache is None
    assert not (tmp_path / "home" / "ref_logps").exists() or not any((tmp_path / "home" / "ref_logps").iterdir())
