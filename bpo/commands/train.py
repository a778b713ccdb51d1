"""``bpo train --config recipe.yaml [key=value ...]``"""

from __future__ import annotations

import argparse

HELP_EPILOG = """examples:
  bpo train --config configs/train/tiny_cpu.yaml
  bpo train --config configs/train/llava15_7b_bpo.yaml data.train=prefs.jsonl data.image_root=images optim.lr=1e-6
  bpo train model.name=llava-hf/llava-1.5-7b-hf data.train=prefs.jsonl loss.type=sft
  accelerate launch --config_file configs/accelerate/ddp.yaml -m bpo train --config ...
  bpo train --help-config      (every key with its default and meaning)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bpo train", description="Preference training (DPO, multi-negative "
                                "BPO, IPO, hinge) or SFT of a vision-language model, LoRA or full.",
                                epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML recipe (see configs/train/)")
    p.add_argument("--help-config", action="store_true", help="list every config key and exit")
    p.add_argument("--dry-run", action="store_true", help="parse and validate the config, print it, and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-5 lora.r=16")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from bpo.config import format_help, load_config, to_dict
    from bpo.train.config import TrainConfig

    if args.help_config:
        print(format_help(TrainConfig))
        return 0
    cfg = load_config(TrainConfig, args.config, args.overrides)
    cfg.validate()
    if args.dry_run:
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
