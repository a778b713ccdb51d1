"""Every file-reading command over one shared corpus of bad inputs, run in-process through ``bpo.cli.main``.

For each (command, bad input) the battery asserts: no exception escapes and no traceback is printed; the
command exits non-zero, or exits 0 having reported a skip; the output names the bad file; every input
file's bytes are unchanged. No model is loaded: each command must fail (or skip) before that.
A second part runs every writing command with its output path equal to an input (same path, hard
link, symlink) and asserts the refusal, before anything is written.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pytest

from bpo.cli import main as cli

GOOD = {"id": "r1", "images": [], "prompt": [{"role": "user", "content": "Describe it."}], "chosen": "A cat.",
        "rejected": [{"text": "A dog.", "source": "weakened"}], "meta": {"objects": ["cat"], "label": "yes"}}


def _line(**change) -> bytes:
    row = {k: v for k, v in {**GOOD, **change}.items() if v is not ...}
    return (json.dumps(row) + "\n").encode()


# name -> file content (bytes), or a special kind made by _make.
CORPUS: dict[str, object] = {
    "latin1_bytes": "{\"id\": \"r1\", \"chosen\": \"caf\xe9\"}\n".encode("latin-1"),
    "utf16": json.dumps(GOOD).encode("utf-16"),
    "nul_bytes": b"\x00\x00\x00\x00\n",
    "png_bytes": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01",
    "empty_file": b"",
    "only_whitespace": b"\n   \n\t\n",
    "truncated_json": b'{"id": "r1", "prompt": [{"role": "user", "content": "x"}], "chosen": "A ca',
    "trailing_garbage": _line()[:-1] + b"}{\n",
    "pretty_printed_object": json.dumps(GOOD, indent=2).encode(),
    "scalar_lines": b"42\n\"text\"\n",
    "list_of_scalars": b"[1, 2, 3]\n",
    "json_null": b"null\n",
    "meta_not_object": _line(meta="oops"),
    "rejected_meta_not_object": _line(rejected=[{"text": "A dog.", "meta": 5}]),
    "id_is_list": _line(id=[1, 2]),
    "id_missing": _line(id=...),
    "id_empty": _line(id="  "),
    "prompt_not_list": _line(prompt=7),
    "prompt_empty": _line(prompt=[]),
    "role_invalid": _line(prompt=[{"role": "robot", "content": "hi"}]),
    "last_turn_not_user": _line(prompt=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
    "content_is_number": _line(prompt=[{"role": "user", "content": 3}]),
    "text_part_without_text": _line(prompt=[{"role": "user", "content": [{"type": "text"}]}]),
    "unknown_part_type": _line(prompt=[{"role": "user", "content": [{"type": "video"}]}]),
    "image_count_mismatch": _line(images=["a.jpg", "b.jpg"],
                                  prompt=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}]),
    "images_not_list": _line(images=5),
    "chosen_empty": _line(chosen=""),
    "chosen_is_number": _line(chosen=12),
    "rejected_is_number": _line(rejected=3),
    "rejected_text_empty": _line(rejected=[{"text": ""}]),
    "duplicate_ids": _line() + _line(),
    "broken_gzip": ("gz", gzip.compress(_line() * 50)[:40]),
    "gzip_of_latin1": ("gz", gzip.compress("{\"id\": \"caf\xe9\"}\n".encode("latin-1"))),
    "a_directory": ("dir", None),
    "missing_file": ("missing", None),
    "symlink_to_directory": ("dirlink", None),
}


def _make(root: Path, name: str, spec) -> Path:
    kind, data = spec if isinstance(spec, tuple) else ("file", spec)
    path = root / (f"{name}.jsonl.gz" if kind == "gz" else f"{name}.jsonl")
    if kind in ("file", "gz"):
        path.write_bytes(data)
    elif kind == "dir":
        path.mkdir()
    elif kind == "dirlink":
        (root / f"{name}.target").mkdir()
        path.symlink_to(root / f"{name}.target")
    return path


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    ok = tmp_path_factory.mktemp("ok")
    (ok / "records.jsonl").write_bytes(_line())
    (ok / "responses.jsonl").write_text(json.dumps({"id": "r1", "response": "Yes, a cat."}) + "\n")
    (ok / "pairs.jsonl").write_text(json.dumps({"chosen": "\n\nHuman: Who is Obama?\n\nAssistant: A president.",
                                                "rejected": "\n\nHuman: Who is Obama?\n\nAssistant: A liar."}) + "\n")
    (ok / "images").mkdir()
    (ok / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (ok / "index.csv").write_text("entity,type,image\nObama,PER,a.png\n")
    cases = {name: _make(root, name, spec) for name, spec in CORPUS.items()}
    return root, ok, cases


def _commands(bad: str, ok: Path, out: Path) -> dict[str, list[str]]:
    o = str(out)
    r, resp = str(ok / "records.jsonl"), str(ok / "responses.jsonl")
    gen = ["--model", str(ok / "no-model"), "--image-root", str(ok / "images"), "--out", o, "--no-progress"]
    return {
        "data validate": ["data", "validate", bad, "--no-image-check"],
        "data stats": ["data", "stats", bad],
        "data import": ["data", "import", bad, "--out", o],
        "data import bpo": ["data", "import", bad, "--format", "bpo", "--out", o],
        "bootstrap weaken": ["bootstrap", "weaken", "--data", bad, *gen],
        "bootstrap blind": ["bootstrap", "blind", "--data", bad, *gen],
        "bootstrap inject": ["bootstrap", "inject", "--backend", "rules", "--data", bad, "--out", o, "--no-progress"],
        "generate": ["generate", "--data", bad, *gen],
        "train": ["train", f"model.name={ok / 'no-model'}", f"data.train={bad}", f"run.output_dir={out}.run",
                  "run.progress=false"],
        "eval pope --gt": ["eval", "pope", "--responses", resp, "--gt", bad, "--out", o],
        "eval pope --responses": ["eval", "pope", "--responses", bad, "--gt", r, "--out", o],
        "eval chair --gt": ["eval", "chair", "--responses", resp, "--gt", bad, "--out", o],
        "eval safety": ["eval", "safety", "--responses", bad, "--judge", "refusal", "--no-judge-cache", "--out", o],
        "eval pairwise": ["eval", "pairwise", "--records", bad, "--judge", "llm", "--judge-model", "m",
                          "--base-url", "http://127.0.0.1:9/v1", "--out", o],
        "eval prepare llavabench": ["eval", "prepare", "llavabench", "--questions", bad, "--out", o],
        "eval compare": ["eval", "compare", bad, r],
        "safety build --pairs": ["safety", "build", "--pairs", bad, "--index", str(ok / "index.csv"),
                                 "--image-root", str(ok / "images"), "--out", o],
        "safety build --index": ["safety", "build", "--pairs", str(ok / "pairs.jsonl"), "--index", bad,
                                 "--image-root", str(ok / "images"), "--out", o],
        "safety export": ["safety", "export", "--records", bad, "--out", o],
        "analyze modality": ["analyze", "modality", "--records", bad, "--text-responses", resp,
                             "--multimodal-responses", resp, "--blind-responses", resp, "--out", f"{out}.dir"],
        "pipeline": ["pipeline", bad],
    }


COMMAND_NAMES = list(_commands("x", Path("."), Path("o")))
_NEEDS_ONLY_ID_AND_META = {"prompt_not_list", "prompt_empty", "role_invalid", "last_turn_not_user",
                           "content_is_number", "text_part_without_text", "unknown_part_type",
                           "image_count_mismatch", "images_not_list", "chosen_empty", "chosen_is_number",
                           "rejected_is_number", "rejected_text_empty", "rejected_meta_not_object"}
# Inputs that are valid for a command (it reads only part of a record): they must still not crash.
VALID_FOR = {
    "generate": {"chosen_empty"},  # eval records need no reference answer
    "eval pope --gt": _NEEDS_ONLY_ID_AND_META,  # ground truth: id + meta.label only
    "eval chair --gt": _NEEDS_ONLY_ID_AND_META,  # ground truth: id + meta.objects only
}


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_every_command_on_every_bad_input(world, command, capsys, tmp_path):
    root, ok, cases = world
    before = {**_snapshot(root), **_snapshot(ok)}
    failures = []
    for name, path in cases.items():
        argv = _commands(str(path), ok, tmp_path / f"{name}.out.jsonl")[command]
        try:
            rc = cli(argv)
        except SystemExit as exc:  # argparse usage errors are fine for the CLI, but none is expected here
            rc = exc.code
        except BaseException as exc:  # noqa: BLE001 - the point is that nothing escapes
            failures.append(f"{name}: raised {type(exc).__name__}: {exc}")
            continue
        cap = capsys.readouterr()
        text = cap.out + cap.err
        errors = [ln for ln in cap.err.splitlines() if ln.startswith("error:")]
        if "Traceback" in text:
            failures.append(f"{name}: traceback printed")
        elif name in VALID_FOR.get(command, ()):
            continue
        elif rc == 0 and "skip" not in text.lower() and "failed" not in text.lower():
            failures.append(f"{name}: exit 0 without reporting a skip")
        elif path.name not in text:
            failures.append(f"{name}: output does not name {path.name}: {text.strip()[-300:]!r}")
        elif rc == 2 and len(errors) != 1:
            failures.append(f"{name}: {len(errors)} 'error:' lines")
    after = {**_snapshot(root), **_snapshot(ok)}
    assert after == before, "an input file changed"
    assert not failures, "\n".join(failures)


def test_the_corpus_has_at_least_30_kinds():
    assert len(CORPUS) >= 30


# ---- no command overwrites its input --------------------------------------------------------------
def _writers(inp: str, other: str, ok: Path, out: str) -> dict[str, list[str]]:
    gen = ["--model", str(ok / "no-model"), "--image-root", str(ok / "images"), "--no-progress"]
    return {
        "data import": ["data", "import", inp, "--out", out],
        "bootstrap weaken": ["bootstrap", "weaken", "--data", inp, "--out", out, *gen],
        "bootstrap inject": ["bootstrap", "inject", "--backend", "rules", "--data", inp, "--out", out],
        "bootstrap merge": ["bootstrap", "merge", "--data", inp, "--out", out],
        "generate": ["generate", "--data", inp, "--out", out, *gen],
        "eval chair --responses": ["eval", "chair", "--responses", inp, "--gt", other, "--out", out],
        "eval pope --gt": ["eval", "pope", "--responses", other, "--gt", inp, "--out", out],
        "eval pope --details": ["eval", "pope", "--responses", other, "--gt", inp, "--out", out + ".x",
                                "--details", out],
        "eval safety": ["eval", "safety", "--responses", inp, "--judge", "refusal", "--out", out],
        "eval prepare": ["eval", "prepare", "llavabench", "--questions", inp, "--out", out],
        "safety export": ["safety", "export", "--records", inp, "--out", out],
        "safety build": ["safety", "build", "--pairs", inp, "--index", str(ok / "index.csv"),
                         "--image-root", str(ok / "images"), "--out", out],
        "train": ["train", f"model.name={ok / 'no-model'}", f"data.train={inp}", f"run.output_dir={out}"],
    }


@pytest.mark.parametrize("link", ["same", "hardlink", "symlink", "dotted"])
def test_no_command_writes_over_its_input(world, link, tmp_path, capsys):
    _, ok, _ = world
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(_line())
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "r1", "response": "Yes."}) + "\n")
    out = {"same": inp, "hardlink": tmp_path / "hard.jsonl", "symlink": tmp_path / "sym.jsonl",
           "dotted": tmp_path / "." / "in.jsonl"}[link]
    if link == "hardlink":
        os.link(inp, out)
    elif link == "symlink":
        out.symlink_to(inp)
    digest = hashlib.sha256(inp.read_bytes()).hexdigest()
    failures = []
    for name, argv in _writers(str(inp), str(other), ok, str(out)).items():
        rc = cli(argv)
        err = capsys.readouterr().err
        if rc == 0 or "never overwrites" not in err and "not an input" not in err and "is the input" not in err:
            failures.append(f"{name}: rc {rc}: {err.strip()[-200:]!r}")
        if hashlib.sha256(inp.read_bytes()).hexdigest() != digest:
            failures.append(f"{name}: the input changed")
            inp.write_bytes(_line())
    assert not failures, "\n".join(failures)


def test_job_files_beside_out_may_not_be_inputs(tmp_path, capsys):
    inp = tmp_path / "out.jsonl.shard-0.jsonl"
    inp.write_bytes(_line())
    rc = cli(["bootstrap", "inject", "--backend", "rules", "--data", str(inp), "--out", str(tmp_path / "out.jsonl")])
    assert rc == 2 and "job files" in capsys.readouterr().err


def test_pipeline_step_may_not_write_a_recipe_input(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_bytes(_line())
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"steps:\n  - name: stats\n    run: data stats {data}\n"
                      f"  - name: imp\n    run: data import {tmp_path}/x.jsonl --out {data}\n    outputs: [{data}]\n")
    before = data.read_bytes()
    assert cli(["pipeline", str(recipe)]) == 2
    assert "recipe input" in capsys.readouterr().err and data.read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path, capsys):
    p = tmp_path / "secret.jsonl"
    p.write_bytes(_line())
    p.chmod(0)
    assert cli(["data", "stats", str(p)]) == 2
    err = capsys.readouterr().err
    assert "permission denied" in err and "Traceback" not in err
