"""bpo analyze noise: target-token probabilities under diffusion noise on a tiny LLaVA, end to end."""

from __future__ import annotations

import pytest
import torch

from bpo.analysis.noise import (
    ProbeItem,
    curve_by_target,
    greedy_by_step,
    noise_curve,
    parse_steps,
    plot_noise,
    target_token,
)
from bpo.analysis.plotting import read_csv
from bpo.cli import main as cli_main
from bpo.data.records import Record


def _record():
    return Record.from_dict({"id": "probe-1", "images": ["red.png"], "chosen": "-",
                             "prompt": [{"role": "user", "content": [{"type": "image"},
                                                                     {"type": "text", "text": "what is it?"}]}]})


@pytest.fixture(scope="module")
def llava(tiny_llava):
    from bpo.models.loading import load

    return load(tiny_llava)


def _clean_and_noised_probs(model, processor, image_root, rec, prefix, token_id, noise=None):
    """Independent reference: prompt via the training Encoder + tokenised prefix, one plain forward."""
    from bpo.models.encoding import Encoder

    ids, vision, _ = Encoder(processor, image_root).encode_prompt(rec)
    ids = ids + processor.tokenizer(prefix, add_special_tokens=False)["input_ids"]
    if noise is not None:
        vision = noise(vision)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                       **vision).logits
    return float(logits[0, -1].float().softmax(-1)[token_id])


def test_parse_steps_list_and_range():
    assert parse_steps("0,500,999") == [0, 500, 999]
    assert parse_steps("0:1000:250") == [0, 250, 500, 750]
    from bpo.errors import BpoError

    with pytest.raises(BpoError, match="0..999"):
        parse_steps("0,1000")
    with pytest.raises(BpoError, match="START:STOP"):
        parse_steps("0:x")


def test_target_token_follows_answer_tokenisation(llava):
    tok = llava[1].tokenizer
    ctx, tid = target_token(tok, "bear", "")
    assert ctx == [] and tid == tok("bear", add_special_tokens=False)["input_ids"][0]
    ctx, tid = target_token(tok, "bear", "there is a")
    text = tok.decode(ctx + [tid])
    # The context is the prefix and the token starts the target word after it.
    assert text.startswith("there is a") and len(text) > len("there is a") and "there is a bear".startswith(text)
    from bpo.errors import BpoError

    with pytest.raises(BpoError, match="empty target"):
        target_token(tok, " ", "x")


def test_noise_curve_step0_is_clean_and_seeds_average(llava, image_root):
    """t = 0 must equal the un-noised probability; t = 500 must equal the mean over seeds 0 and 1 of
    forwards on pixels noised by bpo.bootstrap.weaken.noise_vision (the seeding `bpo bootstrap` uses)."""
    from bpo.bootstrap.weaken import noise_vision

    model, processor = llava
    rec = _record()
    rows = noise_curve(model, processor, [rec], ["red", "square"], [0, 500, 999], seeds=[0, 1],
                       image_root=image_root, prefix="a")
    assert [(r["t"], r["target"]) for r in rows] == [(t, w) for t in (0, 500, 999) for w in ("red", "square")]
    assert all(0.0 <= r["prob_mean"] <= 1.0 for r in rows)
    assert [r["n_seeds"] for r in rows] == [1, 1, 2, 2, 2, 2]
    assert rows[0]["signal"] == 1.0 and rows[2]["signal"] == pytest.approx(0.863, abs=1e-3)

    red0 = rows[0]
    clean = _clean_and_noised_probs(model, processor, image_root, rec, "a", red0["token_id"])
    assert red0["prob_mean"] == pytest.approx(clean, rel=1e-5) and red0["prob_std"] == 0.0

    per_seed = [_clean_and_noised_probs(model, processor, image_root, rec, "a", red0["token_id"],
                                        noise=lambda v, s=s: noise_vision(v, step=500, seed=s, record_id=rec.id))
                for s in (0, 1)]
    red500 = rows[2]
    assert red500["prob_mean"] == pytest.approx(sum(per_seed) / 2, rel=1e-5)
    assert red500["prob_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2, rel=1e-3, abs=1e-9)
    assert rows[4]["prob_mean"] != red0["prob_mean"]  # the noise reached the model
    # Seeded: a second run gives the same numbers.
    again = noise_curve(model, processor, [rec], ["red", "square"], [0, 500, 999], seeds=[0, 1],
                        image_root=image_root, prefix="a", batch_size=1)
    assert [r["prob_mean"] for r in again] == pytest.approx([r["prob_mean"] for r in rows], rel=1e-6)


def test_probe_items_with_in_memory_images_and_plot(llava):
    from PIL import Image

    model, processor = llava
    img = Image.new("RGB", (32, 32), (20, 200, 40))
    items = [ProbeItem("g1", "is there a bear?", [img]), ProbeItem("g2", "is there a person?", [img], "yes ,")]
    rows = noise_curve(model, processor, items, ["bear", "person"], [0, 900], seeds=[3])
    assert len(rows) == 2 * 2 * 2
    curve = curve_by_target(rows)
    # Mean over the two items at each step.
    bear0 = [r["prob_mean"] for r in rows if r["target"] == "bear" and r["t"] == 0]
    assert curve["bear"][0][1] == pytest.approx(sum(bear0) / 2)
    fig = plot_noise(rows)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("diffusion noise step t")
    assert ax.get_ylabel() == "P(first token of target | image, prompt)"
    # Without a prefix "person" starts the answer; after "yes ," it follows a space: two tokens.
    tok = processor.tokenizer
    p1, p2 = tok("person", add_special_tokens=False)["input_ids"][0], target_token(tok, "person", "yes ,")[1]
    assert p1 != p2
    assert [ln.get_label() for ln in ax.get_lines()] == [
        f"bear (tokens {tok.decode([tok('bear', add_special_tokens=False)['input_ids'][0]])!r}, "
        f"{tok.decode([target_token(tok, 'bear', 'yes ,')[1]])!r})",
        f"person (tokens {tok.decode([p1])!r}, {tok.decode([p2])!r})"]
    assert list(ax.get_lines()[0].get_xdata()) == [0, 900]


def test_greedy_by_step_matches_the_engine_on_the_clean_image(llava, image_root):
    from bpo.models.generation import HFEngine, Request, SamplingSettings

    model, processor = llava
    rec = _record()
    rows = greedy_by_step(model, processor, [rec], [0, 999], image_root=image_root, max_new_tokens=5)
    assert [r["t"] for r in rows] == [0, 999]
    engine = HFEngine(model, processor, image_root=image_root)
    ref = engine.generate([Request(rec.id, rec)], SamplingSettings(max_new_tokens=5))[0]
    assert rows[0]["response"] == ref.text


def test_cli_noise_end_to_end(tiny_llava, image_root, tmp_path, capsys):
    out = tmp_path / "noise"
    code = cli_main(["analyze", "noise", "--model", tiny_llava, "--image", f"{image_root}/red.png",
                     "--prompt", "is there a bear?", "--targets", "bear,person", "--steps", "0,500,999",
                     "--prefix", "there is a", "--samples", "2", "--max-new-tokens", "4", "--device", "cpu",
                     "--out", str(out)])
    assert code == 0
    rows = read_csv(out / "noise.csv")
    assert [(r["t"], r["target"]) for r in rows] == [(t, w) for t in ("0", "500", "999") for w in ("bear", "person")]
    assert all(0 <= float(r["prob_mean"]) <= 1 for r in rows)
    assert [r["n_seeds"] for r in rows] == ["1", "1", "2", "2", "2", "2"]
    md = (out / "responses.md").read_text()
    assert md.count("\n| ") == 4  # header + one row per step
    assert len(read_csv(out / "responses.csv")) == 3
    assert (out / "noise.png").read_bytes()[:4] == b"\x89PNG"
    assert "P(bear)" in capsys.readouterr().out


def test_cli_noise_bad_input(tiny_llava, image_root, tmp_path, capsys):
    def base(image="red.png"):
        return ["analyze", "noise", "--model", tiny_llava, "--image", f"{image_root}/{image}", "--prompt", "q",
                "--out", str(tmp_path)]

    assert cli_main([*base(), "--targets", "bear", "--steps", "0,1000"]) == 2
    assert "noise step must be in 0..999" in capsys.readouterr().err
    assert cli_main([*base(), "--targets", " , "]) == 2
    assert "--targets needs at least one word" in capsys.readouterr().err
    assert cli_main([*base("corrupt.png"), "--targets", "bear"]) == 2
    assert "corrupt" in capsys.readouterr().err
