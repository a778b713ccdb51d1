"""``bpo demo``: the built-in pipeline on CPU.

``--quick`` trains DPO for a few steps on a tiny locally built LLaVA and a handful of built-in
records (seconds). The default runs the toy world (``bpo.toy``) through the public stages:
``--scenario hallucination`` (default) is Bootstrapped PO, ``--scenario safety`` is Blind PO.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bpo.cli import main as cli_main
from bpo.config import Command, load_config, option
from bpo.data.records import Negative, Record, user_turn, write_records
from bpo.errors import BpoError
from bpo.models.tiny import build_tiny_llava
from bpo.paths import package_file
from bpo.toy import hallucination_demo
from bpo.train.config import TrainConfig

QUICK_RECIPE = ("train", "quick_demo.yaml")  # inside the package (configs/train/tiny_cpu.yaml is its checkout twin)
QUICK_RECORDS = [
    ("red", (220, 30, 30), "a red square", [("weakened", "a blue circle"), ("injected", "two red squares")]),
    ("green", (30, 200, 50), "a green square", [("weakened", "a red square"), ("injected", "a green star")]),
    ("blue", (30, 40, 220), "a blue square", [("weakened", "a green triangle")]),
    ("yellow", (230, 220, 30), "a yellow square", [("weakened", "a blue square"), ("blind", "I see nothing")]),
]


@dataclass
class DemoOptions:
    out: str = option("outputs/demo", help="output folder")
    quick: bool = option(False, help="tiny DPO smoke run only (seconds)")
    steps: int = option(20, help="training steps of the quick demo")
    seeds: int | None = option(None, help="toy demo: run seeds 0..N-1 and report mean +- std (default 1; 5 with "
                                          "--study)")
    fast: bool = option(False, help="toy demo with tiny sizes (a smoke run for tests)")
    study: bool = option(False, help="toy demo with the power to call each claim: 5 seeds (unless --seeds), 300 "
                                     "eval images")
    eval_images: int | None = option(None, help="toy demo: eval images per seed (default 100)")
    threads: int | None = option(None, help="toy demo: torch CPU threads per seed (pretraining included: another "
                                            "count, another toy model); default 1 for the hallucination scenario, "
                                            "whose tiny ops run faster on one thread than on two")
    jobs: int | None = option(None, help="toy demo (hallucination, sweep): seeds run at once, each in its own "
                                         "process; default: as many as the cores hold at --threads each")
    sweep: bool = option(False, help="toy demo: the learning-rate sweep of each training recipe on tuning seeds "
                                     "100.. (held-out images; --seeds sets how many, default 2)")
    write_docs: bool = option(False, help="toy demo: write the results into README.md and docs/toy.md between "
                                          "their markers")
    scenario: str = option("hallucination", help="toy demo: hallucination = Bootstrapped PO; safety = Blind PO on "
                           "hazardous objects; iterative = 3 rounds of Bootstrapped PO through `bpo iterate`",
                           choices=("hallucination", "safety", "iterative"))

    def validate(self) -> None:
        if self.quick and self.scenario != "hallucination":
            raise BpoError("--quick is the tiny DPO smoke run and has no scenarios; drop --quick to run "
                           f"--scenario {self.scenario} (add --fast for a small version)")
        for key in ("steps", "seeds", "eval_images", "threads", "jobs"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise BpoError(f"--{key.replace('_', '-')} must be >= 1, not {value}")


def write_quick_data(out: Path) -> tuple[Path, Path]:
    from PIL import Image

    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for name, rgb, chosen, negs in QUICK_RECORDS:
        img = Image.new("RGB", (32, 32), (255, 255, 255))
        img.paste(Image.new("RGB", (16, 16), rgb), (8, 8))
        img.save(images / f"{name}.png")
        records.append(Record(id=name, images=[f"{name}.png"], prompt=[user_turn("describe the image", 1)],
                              chosen=chosen, rejected=[Negative(t, s) for s, t in negs]))
    prefs = out / "prefs.jsonl"
    write_records(prefs, records)
    return prefs, images


def run_quick(out: Path, steps: int) -> int:
    from bpo.train.trainer import Trainer

    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    if not (model_dir / "config.json").exists():
        print(f"[1/3] building a tiny random LLaVA in {model_dir}")
        build_tiny_llava(model_dir)
    prefs, images = write_quick_data(out)
    print(f"[2/3] wrote {prefs} ({len(QUICK_RECORDS)} records, images in {images})")
    overrides = [f"model.name={model_dir}", f"data.train={prefs}", f"data.image_root={images}",
                 f"run.output_dir={out / 'run'}", f"run.max_steps={steps}", "run.resume=none"]
    cfg = load_config(TrainConfig, package_file(*QUICK_RECIPE), overrides)  # missing: an error, never defaults
    print("[3/3] training DPO (multi-negative) with LoRA")
    result = Trainer(cfg).setup().train()
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    print(f"\nloss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}, reward accuracy "
          f"{rows[0]['rewards/accuracies']:.2f} -> {rows[-1]['rewards/accuracies']:.2f}")
    print(f"outputs: {out}\n  adapter: {result.get('adapter')}\n  metrics: {out / 'run' / 'metrics.jsonl'}")
    return 0


def _run(args: DemoOptions) -> int:
    import os

    # Before torch loads OpenMP: idle threads sleep instead of spinning. On a shared CPU, spinning 2-thread
    # barriers made the toy's small ops 10-25x slower (docs/toy.md, "Timing"); the numbers are unchanged
    # (same threads, same partitioning). An explicit OMP_WAIT_POLICY wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = Path(args.out)
    if args.quick:
        return run_quick(out, args.steps)
    # the toy demos run the public commands through the face's own dispatcher
    if args.scenario == "iterative":
        from bpo.toy import iterative_demo

        return iterative_demo.main(args, out, cli_main)
    if args.scenario == "safety":
        from bpo.toy import safety_demo

        return safety_demo.main(args, out, cli_main)
    if args.sweep:
        from bpo.toy import sweep

        return sweep.run(args, out, cli_main)
    return hallucination_demo.main(args, out, cli_main)


_COMMAND = Command(DemoOptions, _run, prog="bpo demo", description=__doc__)
parse, main, check = _COMMAND.parse, _COMMAND.main, _COMMAND.check
