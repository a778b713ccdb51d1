"""``bpo generate``: run a model (+ adapter) over an eval set; resumable and data-parallel.

    bpo generate --model M [--adapter A] --data eval_records.jsonl --image-root DIR --out responses.jsonl
                 [--prompt-field FIELD] [--blind] [--batch-size 8] [--max-new-tokens 512]
                 [--temperature 0] [--top-p 1] [--seed 0] [--stop S] [--on-error skip|raise]
                 [--dtype float32] [--engine hf|vllm] [--limit N] [--merge-only]
                 [--preset amber-g|amber-d|objhal|chair500|vlguard]

``--preset`` pins a protocol's decoding (greedy, its max new tokens) and, where the protocol has one,
its prompt, so ``bpo eval prepare`` + ``generate --preset`` + ``eval`` reproduce it (bpo.eval.protocols).
Every option is also a config key: ``--max-new-tokens 64`` == ``max_new_tokens=64`` == ``max_new_tokens: 64``
in a ``--config FILE.yaml``; ``bpo generate --help-config`` lists the keys.

Rows: ``{"id", "response", "prompt", "meta"}`` in input order (read by ``bpo eval``). Greedy by
default, as the usual protocols (POPE, CHAIR, MMSafe-PO's infer_json.py) decode.
"""

from __future__ import annotations

from dataclasses import dataclass

from bpo.commands.engine_options import (
    GenerationOptions,
    ImageGenerationOptions,
    engine_from,
    redefault,
    settings_from,
)
from bpo.config import command_parser, load_yaml, option, parse_command
from bpo.errors import BpoError
from bpo.eval.protocols import PRESETS, apply_preset, check_records
from bpo.jobs import dist_context, errors_path, merge_shards, run_job
from bpo.models.identity import weights_fingerprint
from bpo.safeguard import check_args

PROG = "bpo generate"
DESCRIPTION = "Generate responses to eval records, resumably."


@dataclass(kw_only=True)
class GenerateConfig(ImageGenerationOptions):
    """The shared generation options with eval defaults (greedy, 512 new tokens), plus the prompt and preset."""

    model: str | None = redefault(GenerationOptions, "model", None)  # not needed by --merge-only
    max_new_tokens: int = redefault(GenerationOptions, "max_new_tokens", 512)
    temperature: float = redefault(GenerationOptions, "temperature", 0.0)
    top_p: float = redefault(GenerationOptions, "top_p", 1.0)
    prompt_field: str | None = option(None, metavar="FIELD", help="use the string meta.FIELD as the last user "
                                                                  "turn's text (images kept), e.g. text_prompt")
    blind: bool = option(False, help="remove every image from the prompts")
    preset: str | None = option(None, choices=PRESETS,
                                help="a pinned eval protocol: greedy, its max new tokens (amber-g 512, amber-d 32, "
                                     "objhal 1024, chair500 512, vlguard 256) and its fixed prompt if it has one; "
                                     "see docs/eval.md")
    merge_only: bool = option(False, help="only merge existing OUT.shard-*.jsonl into OUT (after ranks were run "
                                          "separately)")

    def validate(self, require_paths: bool = True) -> None:
        if self.merge_only:
            return  # only --data and --out are read
        super().validate(require_paths)
        if not self.model:
            raise BpoError("pass --model (a model directory or hub id), or --merge-only to merge shards")


def _given(argv: list[str]) -> list[str]:
    """The options the user set in any spelling (flag, key=value, YAML), as the ``--flags`` apply_preset names."""
    ns, extra = command_parser(GenerateConfig, prog=PROG).parse_known_args(argv)
    keys = set(vars(ns)) | {tok.partition("=")[0] for tok in extra if "=" in tok}
    keys |= set(load_yaml(ns.config)) if ns.config else set()
    return ["--" + k.replace("_", "-") for k in keys]


def _parse(argv: list[str], require: bool):
    """The config with its --preset applied (None after --help-config); a contradicting option is an error."""
    cfg = parse_command(GenerateConfig, argv, prog=PROG, description=DESCRIPTION, require=require)
    return (None, None) if cfg is None else (cfg, apply_preset(cfg, _given(argv)))


def check(argv: list[str]) -> None:
    """Parse a ``bpo generate`` line without running it or needing its input files (``bpo pipeline``)."""
    _parse(argv, require=False)


def main(argv: list[str]) -> int:
    cfg, preset = _parse(argv, require=True)
    if cfg is None:
        return 0
    check_args(cfg, job=("out",))  # --out (and its shards) may not be an input
    if cfg.merge_only:
        n, missing = merge_shards(cfg.data, cfg.out)
        print(f"merged {n} row(s) -> {cfg.out}" + (f"; {missing} missing, see {errors_path(cfg.out)}"
                                                   if missing else ""))
        return 0
    return _generate(cfg, preset)


def _generate(cfg: GenerateConfig, preset) -> int:
    from bpo.eval.generate import ResponseGenerator, read_eval_records
    rank, world, barrier, device = dist_context()
    records, input_errors = read_eval_records(cfg.data, on_error=cfg.on_error, limit=cfg.limit)
    if not records:  # before the model loads: nothing would be generated
        why = f"{len(input_errors)} skipped; first: {input_errors[0]}" if input_errors else "the file is empty"
        raise BpoError(f"{cfg.data}: no usable records ({why})")
    if input_errors and rank == 0:
        import sys

        print(f"skipping {len(input_errors)} bad record(s) of {cfg.data} (first: {input_errors[0]})", file=sys.stderr)
    if preset is not None:
        check_records(preset, records)
    gen = ResponseGenerator(engine_from(cfg, device), settings_from(cfg), model=cfg.model, adapter=cfg.adapter,
                            prompt_field=cfg.prompt_field, blind=cfg.blind,
                            preset=preset.name if preset else None, prompt_text=preset.prompt if preset else None)
    # The weights' content, not just their paths: a retrained adapter at the same path must not resume old answers.
    fingerprint = {**gen.fingerprint(), **weights_fingerprint(cfg.model, cfg.adapter)}
    summary = run_job(records, gen.process, out=cfg.out, data=cfg.data, fingerprint=fingerprint,
                      chunk_size=4 * cfg.batch_size, on_error=cfg.on_error, desc="generate",
                      progress=not cfg.no_progress, rank=rank, world=world, barrier=barrier,
                      input_errors=input_errors, limit=cfg.limit)
    print(summary.line("generate"))
    return 0
