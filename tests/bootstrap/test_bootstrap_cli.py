"""Every ``bpo bootstrap`` subcommand and ``bpo generate`` on a 3-record file, plus bad input."""

from __future__ import annotations

import pytest
from bootstrap_helpers import read_rows, record, write_jsonl

from bpo.cli import main

HUMAN = {"text": "A blue circle.", "source": "human"}


@pytest.fixture
def data(tmp_path):
    rows = [record("a", "0.png", "Describe the image.", meta={"objects": ["square"]}),
            record("b", "1.png", "What color is the car?", chosen="The car is blue.", rejected=[HUMAN]),
            record("c", "2.png", "How many people are there?", chosen="Two people.")]
    return write_jsonl(tmp_path / "in.jsonl", rows)


def _common(model, data, image_root, out, *extra):
    return ["--model", model, "--data", data, "--image-root", image_root, "--out", str(out),
            "--max-new-tokens", "6", "--no-progress", *extra]


def _check(out, source, n_new=1):
    rows = read_rows(out)
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    for r in rows:
        new = [n for n in r["rejected"] if n["source"] == source]
        assert len(new) == n_new and all(n["text"] and n["meta"]["model"] for n in new)
    assert rows[1]["rejected"][0] == HUMAN  # existing negatives are kept, first
    assert rows[0]["meta"] == {"objects": ["square"]}
    return rows


def test_weaken_self_blind(tiny_llava, image_root, data, tmp_path, capsys):
    out = tmp_path / "weak.jsonl"
    assert main(["bootstrap", "weaken", *_common(tiny_llava, data, image_root, out)]) == 0
    rows = _check(out, "weakened")
    meta = rows[0]["rejected"][0]["meta"]
    assert (meta["step"], meta["mode"], meta["noise_target"], meta["temperature"], meta["top_p"]) == \
        (500, "sample", "pixels", 1.0, 0.9)
    assert "3 new, 0 resumed, 0 failed of 3" in capsys.readouterr().out
    assert main(["bootstrap", "weaken", *_common(tiny_llava, data, image_root, out)]) == 0  # all done: resumes
    assert "0 new, 3 resumed" in capsys.readouterr().out
    for name, source in (("self", "self"), ("blind", "blind")):
        out = tmp_path / f"{name}.jsonl"
        assert main(["bootstrap", name, *_common(tiny_llava, data, image_root, out)]) == 0
        rows = _check(out, source)
    assert rows[0]["rejected"][0]["meta"]["temperature"] == 0.0  # blind is greedy by default


def test_weaken_contrast_features_on_qwen(tiny_qwen, image_root, data, tmp_path):
    out = tmp_path / "w.jsonl"
    assert main(["bootstrap", "weaken", *_common(tiny_qwen, data, image_root, out), "--mode", "contrast",
                 "--steps", "300,900", "--noise-target", "features", "--alpha", "0.5", "--seed", "7"]) == 0
    rows = _check(out, "weakened", n_new=2)
    metas = [n["meta"] for n in rows[0]["rejected"]]
    assert [m["step"] for m in metas] == [300, 900]
    assert all(m["alpha"] == 0.5 and m["mode"] == "contrast" and m["seed"] == 7 for m in metas)


def test_inject_with_the_models_own_lm(tiny_llava, data, tmp_path):
    out = tmp_path / "inj.jsonl"
    assert main(["bootstrap", "inject", "--model", tiny_llava, "--data", data, "--out", str(out),
                 "--template", "few_shot", "--max-new-tokens", "6", "--no-progress"]) == 0
    rows = read_rows(out)
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    for r in rows:  # a random model either gives a usable rewrite or all attempts are recorded
        injected = [n for n in r["rejected"] if n["source"] == "injected"]
        assert injected or r["meta"]["rejections"]
        for n in injected:
            assert n["meta"]["template"] == "few_shot.v1" and n["meta"]["backend"] == "self"


def test_merge_subcommand(tiny_llava, image_root, data, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    assert main(["bootstrap", "self", *_common(tiny_llava, data, image_root, out)]) == 0
    out.unlink()
    assert main(["bootstrap", "merge", "--data", data, "--out", str(out)]) == 0
    assert "merged 3 row(s)" in capsys.readouterr().out and len(read_rows(out)) == 3
    assert main(["bootstrap", "merge", "--data", data, "--out", str(tmp_path / "none.jsonl")]) == 2


def test_missing_and_corrupt_images_skip_and_raise(tiny_llava, image_root, tmp_path, capsys):
    rows = [record("ok1", "0.png", "Describe."), record("gone", "nope.png", "Describe."),
            record("broken", "bad.png", "Describe."), record("ok2", "3.png", "Describe.")]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "o.jsonl"
    assert main(["bootstrap", "self", *_common(tiny_llava, data, image_root, out)]) == 0
    cap = capsys.readouterr()
    assert "2 new, 0 resumed, 2 failed of 4" in cap.out
    assert "record 'gone'" in cap.err and "not found" in cap.err and "record 'broken'" in cap.err
    assert [r["id"] for r in read_rows(out)] == ["ok1", "ok2"]
    assert [e["id"] for e in read_rows(f"{out}.errors.jsonl")] == ["gone", "broken"]
    # --on-error raise: one-line error (exit 2), and what the first run wrote is still there.
    assert main(["bootstrap", "self", *_common(tiny_llava, data, image_root, out), "--on-error", "raise"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and "gone" in err and "Traceback" not in err
    assert [r["id"] for r in read_rows(f"{out}.shard-0.jsonl")] == ["ok1", "ok2"]


def test_inject_record_without_answer(tiny_llava, tmp_path, capsys):
    rows = [record("x", None, "Describe."), {**record("noanswer", None, "Describe."), "chosen": ""}]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "o.jsonl"
    argv = ["bootstrap", "inject", "--model", tiny_llava, "--data", data, "--out", str(out),
            "--max-new-tokens", "4", "--no-progress"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "1 failed of 1" in cap.out and "record 'noanswer'" in cap.err and "chosen" in cap.err
    assert [r["id"] for r in read_rows(out)] == ["x"]
    assert main([*argv, "--on-error", "raise"]) == 2
    assert "record 'noanswer'" in capsys.readouterr().err


def test_generate_responses(tiny_llava, image_root, tmp_path):
    rows = [record("p1", "0.png", "Is there a dog?", meta={"label": "no", "text_prompt": "Is there a cat?"}),
            {**record("p2", "1.png", "Is there a car?", meta={"label": "yes", "text_prompt": "A car?"}),
             "chosen": None}]
    data = write_jsonl(tmp_path / "eval.jsonl", rows)
    out = tmp_path / "resp.jsonl"
    assert main(["generate", "--model", tiny_llava, "--data", data, "--image-root", image_root, "--out", str(out),
                 "--max-new-tokens", "5", "--no-progress"]) == 0
    got = read_rows(out)
    assert [r["id"] for r in got] == ["p1", "p2"]
    assert set(got[0]) == {"id", "response", "prompt", "meta", "images", "generation"}
    assert got[0]["images"] == ["0.png"] and got[0]["generation"]["max_new_tokens"] == 5
    assert got[0]["generation"]["temperature"] == 0 and got[0]["generation"]["preset"] is None
    assert got[0]["prompt"] == "Is there a dog?" and got[1]["meta"] == {"label": "yes", "text_prompt": "A car?"}
    out2 = tmp_path / "resp2.jsonl"
    assert main(["generate", "--model", tiny_llava, "--data", data, "--image-root", image_root, "--out", str(out2),
                 "--max-new-tokens", "5", "--no-progress", "--prompt-field", "text_prompt", "--blind"]) == 0
    assert [r["prompt"] for r in read_rows(out2)] == ["Is there a cat?", "A car?"]
    assert main(["generate", "--data", data, "--out", str(out2), "--merge-only"]) == 0
    assert main(["generate", "--data", data, "--out", str(out2)]) == 2  # --model is needed to generate


def test_help_and_bad_options(capsys, tiny_llava, data, tmp_path):
    for argv in (["bootstrap", "--help"], ["bootstrap", "weaken", "--help"], ["generate", "--help"]):
        try:  # argparse's --help exits; the subcommand list returns
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        assert code == 0
    assert "--noise-target" in capsys.readouterr().out
    assert main(["bootstrap", "weaken", "--model", tiny_llava, "--data", data, "--out", str(tmp_path / "o"),
                 "--steps", "1000"]) == 2
    assert "noise step must be in 0..999" in capsys.readouterr().err


def test_generate_does_not_resume_answers_of_other_weights_at_the_same_path(tiny_llava, image_root, tmp_path,
                                                                             capsys):
    """The job fingerprint holds the weights' content: new weights at the old path are refused, a rewrite of
    identical bytes (new mtime) still resumes."""
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_llava, model)
    data = write_jsonl(tmp_path / "eval.jsonl", [record("p1", "0.png", "Is there a dog?")])
    argv = ["generate", "--model", str(model), "--data", data, "--image-root", image_root, "--out",
            str(tmp_path / "resp.jsonl"), "--max-new-tokens", "3", "--no-progress"]
    assert main(argv) == 0
    weights = next(model.glob("*.safetensors"))
    tensors = load_file(weights)
    save_file(tensors, weights, metadata={"format": "pt"})  # same content, rewritten
    capsys.readouterr()
    assert main(argv) == 0 and "0 new, 1 resumed" in capsys.readouterr().out
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, weights, metadata={"format": "pt"})  # "retrained": other weights, same path
    assert main(argv) == 2
    assert "different settings (model_files)" in capsys.readouterr().err


def test_blind_passes_text_only_records_through(tiny_llava, image_root, tmp_path, capsys):
    """A text-only record has no blind version: it is written unchanged, without a blind negative, and counted."""
    rows = [record("img", "0.png", "Describe the image."), record("txt", None, "How do I bake bread?"),
            record("txt2", None, "And cake?")]
    data = write_jsonl(tmp_path / "mixed.jsonl", rows)
    out = tmp_path / "blind.jsonl"
    assert main(["bootstrap", "blind", *_common(tiny_llava, data, image_root, out)]) == 0
    got = {r["id"]: r for r in read_rows(out)}
    assert [n["source"] for n in got["img"]["rejected"]] == ["blind"]
    assert got["txt"]["rejected"] == [] and got["txt"]["prompt"] == rows[1]["prompt"]
    assert "note: 2 record(s) without images have no blind version" in capsys.readouterr().out
