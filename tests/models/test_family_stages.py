"""The main stages on every hub-shaped family (bpo.models.families), as a user runs them from the CLI.

Per family, one module-scoped run does: weaken in pixel and feature space (sample and contrast), self, blind and
error injection with the model's own LLM, train LoRA with
the projector and a merge, train full fine-tuning, generate batched vs one at a time, generate from every output
(merged, full, base + adapter). The tests then check each stage's outputs, the plain ``PeftModel.from_pretrained``
logit parity (1e-5, fp32) and that the output folders are complete models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bpo.cli import main as cli
from bpo.models.families import FAMILIES
from tests.conftest import PREF_ROWS

pytestmark = pytest.mark.slow

TEXT_ONLY = {"id": "t1", "images": [], "prompt": [{"role": "user", "content": "how many people are there ?"}],
             "chosen": "two people", "rejected": [{"text": "three dogs", "source": "injected"}]}
SYSTEM = {"id": "s1", "images": ["green.png"],
          "prompt": [{"role": "system", "content": "You are a careful assistant ."},
                     {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image"}]}],
          "chosen": "a green square", "rejected": [{"text": "a red bus", "source": "weakened"}]}
# Other sizes and aspects: other anyres grids (LLaVA-NeXT), other patch grids (Qwen), other tile counts (Idefics3).
SHAPES = [{"id": f"shape-{name}", "images": [name], "chosen": "a red square", "rejected": [{"text": "a cat",
           "source": "weakened"}], "prompt": [{"role": "user", "content": [{"type": "image"},
                                                                            {"type": "text", "text": "what is it ?"}]}]}
          for name in ("tall.png", "small.png")]
ROWS = [*PREF_ROWS, TEXT_ONLY, SYSTEM, *SHAPES]
GEN = ["--max-new-tokens", "5", "--no-progress"]


@pytest.fixture(scope="module")
def family_images(image_root, tmp_path_factory):
    """The shared colour images plus two other shapes."""
    import shutil

    from PIL import Image

    root = tmp_path_factory.mktemp("family_images")
    shutil.copytree(image_root, root, dirs_exist_ok=True)
    Image.new("RGB", (30, 90), (200, 40, 40)).save(root / "tall.png")
    Image.new("RGB", (20, 20), (40, 40, 200)).save(root / "small.png")
    return str(root)


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _train(base, data, family_images, out, *extra):
    return cli(["train", f"model.name={base}", f"data.train={data}", f"data.image_root={family_images}",
                f"run.output_dir={out}", "data.max_length=1024", "run.max_steps=2", "run.batch_size=2",
                "run.progress=false", "run.tensorboard=false", "lora.r=4", "lora.alpha=8", "lora.dropout=0.0",
                "optim.lr=1e-2", "optim.warmup_steps=0", *extra])


def _generate(model, data, family_images, out, *extra):
    return cli(["generate", "--model", str(model), "--data", str(data), "--image-root", family_images,
                "--out", str(out), *GEN, *extra])


@pytest.fixture(scope="module", params=FAMILIES)
def staged(request, tiny_family, family_images, tmp_path_factory):
    family = request.param
    base = tiny_family(family)
    tmp = tmp_path_factory.mktemp(f"stages_{family}")
    data = tmp / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    rc = {}
    for target, mode in (("pixels", "sample"), ("features", "sample"), ("features", "contrast")):
        rc[f"weaken_{target}_{mode}"] = cli(["bootstrap", "weaken", "--model", base, "--data", str(data),
                                             "--image-root", family_images, "--out", str(tmp / f"w_{target}_{mode}.jsonl"),
                                             "--noise-target", target, "--mode", mode, "--steps", "999", *GEN])
    for name in ("self", "blind"):
        rc[name] = cli(["bootstrap", name, "--model", base, "--data", str(data), "--image-root", family_images,
                        "--out", str(tmp / f"{name}.jsonl"), *GEN])
    rc["inject"] = cli(["bootstrap", "inject", "--model", base, "--data", str(data), "--out", str(tmp / "inj.jsonl"),
                        "--template", "few_shot", "--retries", "0", *GEN])
    rc["lora"] = _train(base, data, family_images, tmp / "lora", "lora.train_projector=true", "run.merge=true")
    rc["full"] = _train(base, data, family_images, tmp / "full", "lora.enabled=false", "run.max_steps=1")
    rc["gen_b4"] = _generate(base, data, family_images, tmp / "gen_b4.jsonl", "--batch-size", "4")
    rc["gen_b1"] = _generate(base, data, family_images, tmp / "gen_b1.jsonl", "--batch-size", "1")
    rc["gen_merged"] = _generate(tmp / "lora" / "merged", data, family_images, tmp / "gen_merged.jsonl")
    rc["gen_full"] = _generate(tmp / "full" / "model", data, family_images, tmp / "gen_full.jsonl")
    rc["gen_adapter"] = _generate(base, data, family_images, tmp / "gen_adapter.jsonl", "--adapter",
                                  str(tmp / "lora" / "adapter"))
    return {"family": family, "base": base, "tmp": tmp, "data": data, "rc": rc}


def test_every_stage_exits_zero(staged):
    assert staged["rc"] == {k: 0 for k in staged["rc"]}, staged["family"]


def test_weakened_negatives_for_every_image_record(staged):
    for name in ("w_pixels_sample", "w_features_sample", "w_features_contrast"):
        rows = {r["id"]: r for r in _rows(staged["tmp"] / f"{name}.jsonl")}
        with_image = [r["id"] for r in ROWS if r["images"]]
        for rid in with_image:
            new = [n for n in rows[rid]["rejected"] if n["source"] == "weakened" and "step" in n.get("meta", {})]
            assert len(new) == 1, (staged["family"], name, rid)


def test_feature_noise_reaches_only_its_record(staged, family_images):
    """Feature-space noise reaches the model: the noised record's logits move, its batch mate's do not."""
    import functools

    from bpo.bootstrap.weaken import noise_features
    from bpo.data.records import Record
    from bpo.models.generation import Request, build_hf_engine, projector_hook

    engine = build_hf_engine(staged["base"], image_root=family_images)
    recs = [Record.from_dict(r) for r in (ROWS[0], SHAPES[0], ROWS[1])]  # images of two shapes in one batch
    noise = functools.partial(noise_features, step=999, seed=0, record_id=recs[1].id)
    encoded, failed = engine.encode([Request("a", recs[0]), Request("b", recs[1], feature_transform=noise),
                                     Request("c", recs[2])])
    assert not failed
    inputs = engine.collate(encoded)
    with torch.no_grad():
        clean = engine.model(**inputs).logits[:, -1]
        with projector_hook(engine.model, encoded, engine.encoder.image_token_ids):
            noisy = engine.model(**inputs).logits[:, -1]
    assert not torch.allclose(noisy[1], clean[1], atol=1e-4), staged["family"]
    assert torch.allclose(noisy[0], clean[0], atol=1e-5) and torch.allclose(noisy[2], clean[2], atol=1e-5)


def test_self_blind_inject_write_every_record(staged):
    for name in ("self", "blind", "inj"):
        assert [r["id"] for r in _rows(staged["tmp"] / f"{name}.jsonl")] == [r["id"] for r in ROWS], name
    blind = {r["id"]: r for r in _rows(staged["tmp"] / "blind.jsonl")}
    assert any(n["source"] == "blind" for n in blind["r1"]["rejected"])


def test_batched_generation_equals_one_at_a_time(staged):
    b4, b1 = _rows(staged["tmp"] / "gen_b4.jsonl"), _rows(staged["tmp"] / "gen_b1.jsonl")
    assert [r["id"] for r in b4] == [r["id"] for r in ROWS]
    assert [r["response"] for r in b4] == [r["response"] for r in b1], staged["family"]


def _hf_inputs(processor, row, images_dir):
    """The Hugging Face way: every content a list of parts with the images inline, apply_chat_template(tokenize)."""
    from PIL import Image

    images = iter(Image.open(f"{images_dir}/{name}").convert("RGB") for name in row["images"])
    conv = [{"role": m["role"], "content": [{"type": "image", "image": next(images)} if p["type"] == "image"
                                            else p for p in (m["content"] if isinstance(m["content"], list)
                                                             else [{"type": "text", "text": m["content"]}])]}
            for m in row["prompt"]]
    return processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")


def test_generation_equals_plain_transformers_generate(staged, family_images):
    """bpo's greedy answers equal ``model.generate`` on ``processor.apply_chat_template(tokenize=True)`` inputs."""
    from transformers import AutoModelForImageTextToText

    from bpo.models.loading import load_processor

    model = AutoModelForImageTextToText.from_pretrained(staged["base"]).eval()
    processor = load_processor(staged["base"])
    ours = {r["id"]: r["response"] for r in _rows(staged["tmp"] / "gen_b1.jsonl")}
    for row in ROWS:
        inputs = _hf_inputs(processor, row, family_images)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        plain = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert ours[row["id"]] == plain, (staged["family"], row["id"])


def test_outputs_are_complete_model_folders(staged):
    from transformers import AutoConfig

    for folder in (staged["tmp"] / "lora" / "merged", staged["tmp"] / "full" / "model"):
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "generation_config.json", "processor_config.json", "tokenizer.json"} <= names
        assert any(n.endswith(".safetensors") for n in names)
        assert "chat_template.jinja" in names or "chat_template.json" in names
        saved = json.loads((folder / "processor_config.json").read_text())["processor_class"]
        stock = json.loads((Path(staged["base"]) / "processor_config.json").read_text())["processor_class"]
        assert saved == stock and "ImageOnly" not in (folder / "processor_config.json").read_text()
        assert AutoConfig.from_pretrained(folder).model_type == AutoConfig.from_pretrained(staged["base"]).model_type
        assert len(_rows(staged["tmp"] / "gen_merged.jsonl")) == len(ROWS)
        assert len(_rows(staged["tmp"] / "gen_full.jsonl")) == len(ROWS)


def test_plain_transformers_loads_the_outputs(staged):
    """``from_pretrained`` with no bpo code: the model classes, and the stock processor where torchvision allows."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

    for folder in (staged["tmp"] / "lora" / "merged", staged["tmp"] / "full" / "model"):
        model = AutoModelForImageTextToText.from_pretrained(folder)
        assert type(model).__name__ == json.loads((folder / "config.json").read_text())["architectures"][0]
        if staged["family"] not in ("qwen2vl", "qwen25vl"):  # their stock processor needs torchvision
            assert isinstance(AutoProcessor.from_pretrained(folder), ProcessorMixin)


def _logits(model, processor, record, family_images):
    from bpo.data.records import Record
    from bpo.models.encoding import Encoder

    rec = Record.from_dict(record)
    ids, vision, extras = Encoder(processor, family_images).encode_prompt(rec)
    inputs = {"input_ids": torch.tensor([ids]), **vision, **{k: torch.tensor([v]) for k, v in extras.items()}}
    with torch.no_grad():
        return model(**inputs).logits


def test_plain_peft_reload_has_the_same_logits(staged, family_images):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from bpo.models.loading import load, load_processor

    adapter = staged["tmp"] / "lora" / "adapter"
    ours, processor = load(staged["base"], adapter=str(adapter))
    plain = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(staged["base"]), str(adapter)).eval()
    merged = AutoModelForImageTextToText.from_pretrained(staged["tmp"] / "lora" / "merged").eval()
    base = AutoModelForImageTextToText.from_pretrained(staged["base"]).eval()
    proc = load_processor(staged["base"])
    trained = _logits(ours, processor, ROWS[0], family_images)
    assert not torch.allclose(_logits(base, proc, ROWS[0], family_images), trained, atol=1e-4)  # training changed it
    for record in (ROWS[0], ROWS[2], TEXT_ONLY, SYSTEM):
        a = _logits(ours, processor, record, family_images)
        with torch.no_grad():  # the plain side: no bpo code in its inputs either
            b = plain(**_hf_inputs(proc, record, family_images)).logits
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (staged["family"], (a - b).abs().max())
        m = _logits(merged, proc, record, family_images)
        assert torch.allclose(a, m, atol=1e-4, rtol=0), (staged["family"], (a - m).abs().max())
