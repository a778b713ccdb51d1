"""``bpo safety``: build MMSafe-PO style multimodal safety data from text-only preference pairs.

    bpo safety sample --out DIR
    bpo safety build --pairs hh.jsonl --index images.csv --image-root DIR --out out.jsonl
                     [--entity-backend gazetteer|column|llm] [--seed 0] [--llm-rewrite]
                     [--on-error skip|raise] [--max-prompt-words N] [--report PATH]
                     [--llm-backend openai|hf --llm-model NAME --llm-base-url URL --llm-api-key-env VAR]
    bpo safety export --records out.jsonl --out mmsafe.json [--prompt-key question|prompt]

Every option is also a config key: ``--image-root DIR`` == ``image_root=DIR`` == ``image_root: DIR`` in a
``--config FILE.yaml`` (the LLM options form a section: ``--llm-model M`` == ``llm.model=M``);
``bpo safety SUB --help-config`` lists the keys. See docs/blind_po.md for a worked example.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bpo.commands.engine_options import at_least, need_dir
from bpo.config import CommandGroup, option
from bpo.data.records import read_records
from bpo.errors import BpoError
from bpo.io import write_json, write_jsonl
from bpo.safeguard import check_args
from bpo.safety.build import BuildOptions, run_build
from bpo.safety.entities import ENTITY_BACKENDS
from bpo.safety.llm import LLMSpec, make_llm
from bpo.safety.mmsafe import to_mmsafe_po
from bpo.safety.sample import write_sample


@dataclass(kw_only=True)
class LLMOptions:
    """The LLM of ``--entity-backend llm`` and ``--llm-rewrite`` (flags --llm-backend, --llm-model, ...)."""

    backend: str = option("openai", choices=("openai", "hf"),
                          help="openai (any OpenAI-compatible endpoint) | hf (local)")
    model: str = option("", help="model name (openai) or local model directory (hf)")
    base_url: str | None = option(None, help="endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = option("OPENAI_API_KEY",
                              help="NAME of the environment variable holding the API key (the key is never logged)")
    max_new_tokens: int = option(128, help="reply length cap")


@dataclass(kw_only=True)
class BuildConfig:
    """Text-only pairs + image index -> multimodal preference records."""

    # --- inputs / outputs
    pairs: str = option(help="HH-RLHF JSONL (chosen/rejected strings) or {prompt, chosen, rejected}")
    index: str = option(help="image index: CSV (entity,type,image[,aliases]) or JSONL")
    image_root: str = option(help="directory the index's image paths are relative to")
    out: str = option(help="output records JSONL")
    report: str | None = option(None, help="report path (default: build_report.json beside --out)")
    # --- pipeline
    entity_backend: str = option("gazetteer", help="gazetteer | column | llm")
    entity_column: str = option("entity", help="column backend: the entity column")
    entity_type_column: str = option("entity_type", help="column backend: the optional type column")
    seed: int = option(0, help="seed of the per-record referring-phrase choice")
    llm_rewrite: bool = option(False, help="polish the rule-based rewrite with an LLM")
    on_error: str = option("raise", choices=("raise", "skip"),
                           help="malformed pairs / index rows: stop (raise) or skip and count them")
    max_prompt_words: int | None = option(None, help="drop records whose prompt has more words")
    data_type: str = option("harmless", flag="--type", help="MMSafe-PO 'type' field")
    id_prefix: str | None = option(None, help="ids for rows without one: PREFIX<line> (default: file stem-)")
    llm: LLMOptions = field(default_factory=LLMOptions, metadata={"help": "the LLM (entity backend llm, --llm-rewrite)"})
    no_llm_cache: bool = option(False, help="do not reuse or store LLM replies (default: cached under "
                                            "$BPO_HOME/safety-llm)")

    def validate(self, require_paths: bool = True) -> None:
        try:
            ENTITY_BACKENDS.get(self.entity_backend)
        except BpoError as exc:
            raise BpoError(f"--entity-backend: {exc}") from None
        if (self.entity_backend == "llm" or self.llm_rewrite) and not self.llm.model:
            why = "--llm-rewrite" if self.llm_rewrite else "--entity-backend llm"
            raise BpoError(f"{why} needs a model name: pass --llm-model NAME (llm.model=NAME)")
        at_least(self.max_prompt_words, 1, "--max-prompt-words", 60)
        at_least(self.llm.max_new_tokens, 1, "--llm-max-new-tokens", 128)
        if require_paths:
            need_dir(self.image_root, "--image-root", "the index's image paths are relative to")


@dataclass(kw_only=True)
class SampleConfig:
    """Write the bundled sample (pairs, index, drawn images)."""

    out: str = option(help="directory to write into")


@dataclass(kw_only=True)
class ExportConfig:
    """Records -> flat MMSafe-PO rows (USER: ... ASSISTANT:)."""

    records: str = option(help="records JSONL written by `bpo safety build`")
    out: str = option(help="output .json (a list, like the released files) or .jsonl")
    prompt_key: str = option("question", choices=("question", "prompt"),
                             help="'question' (GitHub test.json) or 'prompt' (HF card)")


def _build(args: BuildConfig) -> int:
    check_args(args)  # --out/--report may not be --pairs or --index

    options = BuildOptions(entity_backend=args.entity_backend, seed=args.seed, llm_rewrite=args.llm_rewrite,
                           on_error=args.on_error, max_prompt_words=args.max_prompt_words,
                           data_type=args.data_type, id_prefix=args.id_prefix)
    llm = None
    if args.entity_backend == "llm" or args.llm_rewrite:
        o = args.llm
        llm = make_llm(LLMSpec(backend=o.backend, model=o.model, base_url=o.base_url, api_key_env=o.api_key_env,
                               max_new_tokens=o.max_new_tokens), cache=not args.no_llm_cache)
    report = run_build(args.pairs, args.index, args.image_root, args.out, options, llm=llm,
                       report_path=args.report,
                       finder_options={"column": args.entity_column, "type_column": args.entity_type_column})
    dropped = ", ".join(f"{k} {v}" for k, v in report["filtered"].items() if v) or "none"
    print(f"read {report['rows_read']} pairs ({report['bad_rows']} bad rows skipped); "
          f"wrote {report['written']} records to {args.out}")
    print(f"filtered: {dropped}")
    print(f"report: {report['report_path']}")
    return 0


def _sample(args: SampleConfig) -> int:
    paths = write_sample(args.out)
    print(f"wrote {paths['pairs']}, {paths['index']} and images under {paths['image_root']}")
    print(f"next: bpo safety build --pairs {paths['pairs']} --index {paths['index']} "
          f"--image-root {paths['image_root']} --out {args.out.rstrip('/')}/blind_po.jsonl")
    return 0


def _export(args: ExportConfig) -> int:
    from pathlib import Path

    check_args(args)  # --out may not be --records

    rows = [to_mmsafe_po(r, prompt_key=args.prompt_key) for r in read_records(args.records)]
    (write_jsonl if Path(args.out).suffix == ".jsonl" else write_json)(args.out, rows)
    print(f"wrote {len(rows)} MMSafe-PO rows to {args.out}")
    return 0


TABLE = {
    "build": (BuildConfig, _build, "text-only pairs + image index -> multimodal preference records"),
    "sample": (SampleConfig, _sample, "write the bundled sample (pairs, index, drawn images)"),
    "export": (ExportConfig, _export, "records -> flat MMSafe-PO rows (USER: ... ASSISTANT:)"),
}


_GROUP = CommandGroup(TABLE, prog="bpo safety", description=__doc__.split("\n\n")[0])
main, check = _GROUP.main, _GROUP.check
