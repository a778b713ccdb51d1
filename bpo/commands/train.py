"""``bpo train --config recipe.yaml [key=value ...]``"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bpo.config import Command, option, to_dict
from bpo.train.config import TrainConfig

HELP_EPILOG = """examples:
  bpo train --config configs/train/tiny_cpu.yaml
  bpo train --config configs/train/llava15_7b_bpo.yaml data.train=prefs.jsonl data.image_root=images optim.lr=1e-6
  bpo train model.name=llava-hf/llava-1.5-7b-hf data.train=prefs.jsonl loss.type=sft
  accelerate launch --config_file configs/accelerate/ddp.yaml -m bpo train --config configs/train/llava15_7b_bpo.yaml
  bpo train --help-config      (every key with its default and meaning)
"""

DESCRIPTION = ("Preference training (DPO, multi-negative BPO, IPO, hinge) or SFT of a vision-language model, "
               "LoRA or full.")


@dataclass
class TrainCommand(TrainConfig):
    """The training config plus what the command itself does with it."""

    dry_run: bool = option(False, help="parse and validate the config, print it, and exit", flag="--dry-run")


def _run(cmd: TrainCommand) -> int:
    # the trainer (and the config.yaml it writes) gets the training config alone
    cfg = TrainConfig(**{f.name: getattr(cmd, f.name) for f in dataclasses.fields(TrainConfig)})
    if cmd.dry_run:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    from bpo.train.trainer import Trainer

    result = Trainer(cfg).setup().train()
    print(f"done: {result['steps']} steps, final loss {result['final_loss']:.4f}; outputs in {result['output_dir']}")
    for key in ("adapter", "merged", "model"):
        if key in result:
            print(f"  {key}: {result[key]}")
    print(f"  metrics: {result['output_dir']}/metrics.jsonl (plot: bpo analyze curves {result['output_dir']})")
    return 0


_COMMAND = Command(TrainCommand, _run, prog="bpo train", description=DESCRIPTION, epilog=HELP_EPILOG)
parse, main, check = _COMMAND.parse, _COMMAND.main, _COMMAND.check
