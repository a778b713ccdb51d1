"""`bpo iterate`: the command lines of each round, and resuming (killed round, finished round, changed inputs)."""

from __future__ import annotations

import json
import shlex

import pytest

from bpo.cli import main as cli
from bpo.config import load_config
from bpo.errors import BpoError
from bpo.iterative.rounds import IterateConfig, build_steps, run_iterate, slice_for, write_round_inputs


def _cfg(tmp_path, micro_world, *extra):
    model, d = micro_world
    return load_config(IterateConfig, None, [
        f"model={model}", f"sft={d.train}", f"image_root={d.image_root}", f"heldout={d.chair}", f"vocab={d.vocab}",
        f"out={tmp_path / 'it'}", "rounds=2", "batch_size=8", "max_new_tokens=6", "train.run.max_steps=2",
        "train.run.batch_size=4", "train.run.save_every=1", "train.run.tensorboard=false", "train.lora.r=2",
        "train.lora.alpha=4", "train.lora.dropout=0.0", "train.optim.warmup_steps=0", "train.optim.lr=1e-2",
        *extra])


def _by_name(steps):
    return {s.name: shlex.split(s.run) for s in steps}


def test_round_command_lines(tmp_path, micro_world):
    cfg = _cfg(tmp_path, micro_world, "sources=weakened,injected", "reference=base")
    steps, paths = build_steps(cfg, write_round_inputs(cfg))
    cmd = _by_name(steps)
    assert list(cmd)[:2] == ["r0-generate", "r0-chair"] and "--adapter" not in cmd["r0-generate"]
    assert "--adapter" not in cmd["r1-weakened"]  # round 1 bootstraps from the base model
    assert cmd["r2-weakened"][cmd["r2-weakened"].index("--adapter") + 1] == str(paths[1].adapter)
    assert cmd["r2-injected"][cmd["r2-injected"].index("--data") + 1] == str(paths[2].chain[0])
    assert not any(a.startswith("lora.init_from") for a in cmd["r1-train"])
    assert f"lora.init_from={paths[1].adapter}" in cmd["r2-train"] and "loss.reference=base" in cmd["r2-train"]
    assert f"data.train={paths[2].chain[1]}" in cmd["r2-train"] and "run.max_steps=2" in cmd["r2-train"]
    assert cmd["r2-generate"][cmd["r2-generate"].index("--adapter") + 1] == str(paths[2].adapter)
    prev = _by_name(build_steps(_cfg(tmp_path, micro_world), write_round_inputs(cfg))[0])
    assert "loss.reference=start" in prev["r2-train"]  # the default: pi_ref = the previous round


def test_fresh_records_are_disjoint_slices(tmp_path, micro_world):
    assert [slice_for(list(range(7)), r, 3) for r in (1, 2, 3)] == [[0, 1], [2, 3], [4, 5, 6]]
    cfg = _cfg(tmp_path, micro_world, "records=fresh")
    files = write_round_inputs(cfg)
    ids = [[json.loads(line)["id"] for line in f.read_text().splitlines()] for f in files]
    assert len(ids[0]) == len(ids[1]) == 4 and not set(ids[0]) & set(ids[1])
    same = write_round_inputs(_cfg(tmp_path, micro_world))
    assert same[0].read_text() == same[1].read_text() and same[0] != same[1]


def test_config_errors(tmp_path, micro_world):
    with pytest.raises(BpoError, match="sources"):
        _cfg(tmp_path, micro_world, "sources=weakened,blind")
    with pytest.raises(BpoError, match="rounds"):
        _cfg(tmp_path, micro_world, "rounds=0")
    with pytest.raises(BpoError, match="does not exist"):
        _cfg(tmp_path, micro_world, f"pope={tmp_path / 'nope.jsonl'}").validate()
    with pytest.raises(BpoError, match="fresh needs"):
        write_round_inputs(_cfg(tmp_path, micro_world, "records=fresh", "rounds=9"))


class Killed(Exception):
    pass


def _status(results):
    return {r["step"]: r["status"] for r in results}


def test_killed_round_resumes_finished_round_is_kept_changed_input_redoes(tmp_path, micro_world, monkeypatch):
    from bpo.train.trainer import Trainer

    cfg = _cfg(tmp_path, micro_world, "records=fresh")
    real = Trainer._optimizer_step
    calls = {"n": 0}

    def dies_in_round_2(self):
        if "round-2" in str(self.out):
            calls["n"] += 1
            if calls["n"] == 2:  # after the step-1 checkpoint of round 2
                raise Killed
        return real(self)

    monkeypatch.setattr(Trainer, "_optimizer_step", dies_in_round_2)
    with pytest.raises(Killed):
        run_iterate(cfg, run_command=cli, log=lambda *_: None)
    r2 = tmp_path / "it" / "round-2" / "train"
    assert (r2 / "checkpoint-1").is_dir() and not (r2 / "adapter").exists()

    lines = []  # what `bpo train` says (it says where it resumed from)
    real_init = Trainer.__init__

    def init(self, c, *, log=print):
        real_init(self, c, log=lambda m: (lines.append(m), log(m)))

    monkeypatch.setattr(Trainer, "__init__", init)
    monkeypatch.setattr(Trainer, "_optimizer_step", real)
    res = run_iterate(cfg, run_command=cli, log=lambda *_: None)
    status = _status(res["steps"])
    assert all(status[s] == "skipped" for s in status if s.startswith(("r0-", "r1-")) or s == "r2-weakened")
    assert status["r2-train"] == "ran" and any("resumed from" in m and "checkpoint-1" in m for m in lines)
    assert (r2 / "adapter" / "adapter_config.json").exists()
    rows = json.loads((tmp_path / "it" / "rounds.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[2]["train"]["step"] == 2

    # a finished run is not redone
    assert set(_status(run_iterate(cfg, run_command=cli, log=lambda *_: None)["steps"]).values()) == {"skipped"}

    # round 2's records change: round 2 is redone from scratch, round 1 is kept
    sft = tmp_path / "sft_edited.jsonl"
    recs = [json.loads(line) for line in open(cfg.sft)]
    recs[-1]["chosen"] = recs[-1]["chosen"] + " ."  # a record of the second slice
    sft.write_text("".join(json.dumps(r) + "\n" for r in recs))
    lines.clear()
    cfg2 = _cfg(tmp_path, micro_world, "records=fresh", f"sft={sft}")
    status = _status(run_iterate(cfg2, run_command=cli, log=lambda *_: None)["steps"])
    assert all(status[s] == "skipped" for s in status if s.startswith(("r0-", "r1-")))
    assert all(status[s] == "ran" for s in status if s.startswith("r2-"))
    assert not any("resumed from" in m for m in lines)  # the old round-2 folder was removed, not resumed


def test_cli_dry_run_and_help(tmp_path, micro_world, capsys):
    model, d = micro_world
    assert cli(["iterate", "--help-config"]) == 0
    assert "reference" in capsys.readouterr().out
    args = [f"model={model}", f"sft={d.train}", f"heldout={d.chair}", f"out={tmp_path / 'x'}", "rounds=2"]
    assert cli(["iterate", "--dry-run", *args]) == 0
    out = capsys.readouterr().out
    assert "r2-train: bpo train" in out and "lora.init_from=" in out and not (tmp_path / "x" / "inputs").exists()


def test_shipped_iterate_config_parses_and_its_train_settings_apply():
    from pathlib import Path

    from bpo.iterative.rounds import _flatten
    from bpo.train.config import TrainConfig

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(IterateConfig, root / "configs" / "recipes" / "iterative_bpo.yaml")
    assert (cfg.rounds, cfg.reference, cfg.sources) == (3, "previous", ["weakened", "injected"])
    train = load_config(TrainConfig, root / cfg.train_config, _flatten(cfg.train))
    assert train.run.epochs == 1 and train.lora.r == 64


def test_iterate_options_three_spellings_and_run_switches(tmp_path):
    from bpo.commands import iterate

    yaml_file = tmp_path / "it.yaml"
    yaml_file.write_text("model: m\nsft: later/sft.jsonl\nheldout: later/h.jsonl\nrounds: 2\n"
                         "sources: [weakened, injected]\ntrain: {run: {max_steps: 4}}\n")
    by_flags = iterate.parse(["--model", "m", "--sft", "later/sft.jsonl", "--heldout", "later/h.jsonl", "--rounds",
                              "2", "--sources", "weakened", "injected", "train.run.max_steps=4"], require=False)
    by_keys = iterate.parse(["model=m", "sft=later/sft.jsonl", "heldout=later/h.jsonl", "rounds=2",
                             "sources=weakened,injected", "train.run.max_steps=4"], require=False)
    by_yaml = iterate.parse(["--config", str(yaml_file)], require=False)
    assert by_flags == by_keys == by_yaml
    cmd = iterate.parse(["--config", str(yaml_file), "--dry-run", "--force", "train.optim.lr=0.5"], require=False)
    assert cmd.dry_run and cmd.force and cmd.train == {"run": {"max_steps": 4}, "optim": {"lr": 0.5}}
    cfg = cmd.rounds_config()  # what rounds.json records: the config, not how this invocation ran
    assert type(cfg) is IterateConfig and "force" not in vars(cfg) and cfg.rounds == 2
    with pytest.raises(BpoError, match="sft: later/sft.jsonl does not exist"):
        iterate.parse(["--config", str(yaml_file)])
    with pytest.raises(BpoError, match="heldout is required"):
        iterate.check(["model=m", "sft=s.jsonl"])
