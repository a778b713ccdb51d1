"""Pinned evaluation protocols, and the protocol block every ``bpo eval`` report carries.

A hallucination or safety number means little without its protocol: CHAIR for the same model moves by
several points with the image list and the token budget, and a judged score moves with the judge. So
every report records, under ``"protocol"``:

* ``name`` / ``label``: a pinned protocol (``objhal``, ``chair500``, ``amber-g``, ``amber-d``,
  ``vlguard``) or the task name for an unpinned run;
* ``evaluator`` and ``evaluator_version``: the scorer; bump the version whenever scoring changes;
* ``image_list_sha256`` / ``n_images`` and ``items_sha256`` / ``n_items``: what was scored;
* ``prompt_set``: the name of the pinned prompt set when the prompts are exactly it, its size and hash;
* ``max_new_tokens`` and ``decoding``: from the ``generation`` field ``bpo generate`` writes per row
  (or ``--max-new-tokens`` for response files made elsewhere);
* ``judge``: ``"rules"`` or the judge's kind and model; ``scoring``: scorer settings (vocabulary,
  matching mode); ``deviations``: where the pinned protocol departs from the reference code.

:func:`protocol_mismatches` lists the fields on which reports differ; ``bpo eval compare`` refuses to
compare them unless told (``--allow-protocol-mismatch``). ``bpo generate --preset NAME`` applies a
protocol's decoding (:data:`PRESETS`), so prepare + generate + eval reproduce it with no hand-set option.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from bpo.errors import BpoError
from bpo.eval.inputs import load_responses
from bpo.io import read_jsonl

# Bump a scorer's version whenever its numbers can change for the same inputs.
EVALUATOR_VERSIONS = {"chair": "1", "pope": "1", "safety": "1", "amber": "1", "vlguard": "1", "mmvet": "1",
                      "llavabench": "1", "pairwise": "1"}

# The 8 Object HalBench instructions, as published in RLHF-V (Yu et al., 2023, arXiv 2312.00849, Table 6:
# "The list of instructions for Object HalBench"). These are the benchmark's own prompts, quoted so that the
# protocol can be checked; the 300 image ids are not shipped (see `bpo eval prepare objhal`).
OBJHAL_PROMPTS: tuple[str, ...] = (
    "Provide a thorough description of the given image.",
    "What is this photo about? Please answer in great detail.",
    "Provide a thorough description of the given picture.",
    "Explain the narrative or story that the image seems to convey, detailing each part that contributes to it.",
    "Please provide a detailed description of the image. Describe the visual elements, colors, shapes, textures, "
    "and any objects or people present along with the overall mood or atmosphere portrayed in the image.",
    "Please provide a detailed description of the image, including its visual elements, such as colors, shapes, "
    "textures, objects, and people.",
    "Provide an intricate description of the image, capturing its visual elements, including colors, shapes, "
    "textures, objects, and any people present.",
    "Compose a detailed account of the image, encompassing its visual characteristics, like colors, shapes, "
    "textures, objects, and any human subjects, by paying careful attention to the specifics.",
)
CHAIR500_PROMPT = "Please describe this image in detail."
AMBER_G_PROMPT = "Describe this image."  # the query of every generative item in AMBER's query files


@dataclass(frozen=True)
class Protocol:
    name: str
    label: str
    task: str  # the `bpo eval` command that scores it
    max_new_tokens: int
    prompt: str | None = None  # a fixed prompt for every item; None: each record's own prompt
    prompt_set: str | None = None  # name of the pinned prompt set
    prompts: tuple[str, ...] = ()  # the pinned prompts (empty: per-item benchmark questions)
    n_images: int | None = None
    deviations: tuple[str, ...] = field(default_factory=tuple)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("objhal", "ObjHal (rule-based)", "chair", 1024, prompt_set="rlhfv-objhal-8",
             prompts=OBJHAL_PROMPTS, n_images=300, deviations=(
                 "objects are extracted by rules (bpo's COCO-80 synonym table), not by the GPT model of the "
                 "official scorer: this is not the GPT-scored Object HalBench number",
                 "ground truth is the COCO instance annotations; the official scorer also adds objects parsed "
                 "from the 5 COCO captions",
                 "greedy decoding; RLHF-V/RLAIF-V's scripts decode with 3 beams")),
    Protocol("chair500", "CHAIR (500 COCO val2014 images, rule-based)", "chair", 512, prompt=CHAIR500_PROMPT,
             prompt_set="chair500-detail", prompts=(CHAIR500_PROMPT,), n_images=500, deviations=(
                 "the 500-image list is bpo's (seeded sample of val2014); papers use their own lists, so compare "
                 "with bpo runs, not digit-for-digit with papers",)),
    Protocol("amber-g", "AMBER generative", "amber", 512, prompt=AMBER_G_PROMPT, prompt_set="amber-g",
             prompts=(AMBER_G_PROMPT,), n_images=1004),
    Protocol("amber-d", "AMBER discriminative", "amber", 32, prompt_set="amber-d-queries"),
    Protocol("vlguard", "VLGuard (string-match ASR)", "vlguard", 256, prompt_set="vlguard-test-instructions"),
)}
PRESETS = tuple(PROTOCOLS)


def get(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise BpoError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def list_sha256(values) -> str:
    """SHA-256 of the sorted, de-duplicated string values, one per line (order-free, format-free)."""
    return hashlib.sha256("\n".join(sorted({str(v) for v in values})).encode("utf-8")).hexdigest()


def image_key(path: str) -> str:
    """An image's identity for the list hash: its file name, whatever directory it was read from."""
    return PurePosixPath(str(path).replace("\\", "/")).name


def row_images(row: dict) -> list[str]:
    out = []
    for value in (row.get("images"), row.get("image"), (row.get("meta") or {}).get("image")):
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out += [v for v in value if isinstance(v, str)]
    return out


def prompt_set_info(prompts: list[str], protocol: Protocol | None = None) -> dict | None:
    """``{name, n, sha256}`` of the distinct prompts; ``name`` is the pinned set only when they match it."""
    distinct = sorted({" ".join(p.split()) for p in prompts if isinstance(p, str) and p.strip()})
    if not distinct:
        return None
    name = "custom"
    if protocol is not None and protocol.prompt_set:
        pinned = {" ".join(p.split()) for p in protocol.prompts}
        if not pinned or set(distinct) <= pinned:
            name = protocol.prompt_set
    return {"name": name, "n": len(distinct), "sha256": list_sha256(distinct)}


def generation_info(rows: list[dict], max_new_tokens: int | None = None) -> tuple[int | str | None, str | None]:
    """``(max_new_tokens, decoding)`` from the rows' ``generation`` fields (written by ``bpo generate``).

    ``max_new_tokens`` is what the caller states for files made elsewhere; it must agree with the rows.
    Rows that disagree with each other give ``"mixed"``.
    """
    gens = [row.get("generation") for row in rows if isinstance(row.get("generation"), dict)]
    tokens = {g.get("max_new_tokens") for g in gens}
    temps = {g.get("temperature") for g in gens}
    found = None if not gens else (tokens.pop() if len(tokens) == 1 else "mixed")
    if max_new_tokens is not None:
        if found is not None and found != max_new_tokens:
            raise BpoError(f"--max-new-tokens {max_new_tokens} disagrees with the responses, which were generated "
                           f"with max_new_tokens={found}; drop the option")
        found = max_new_tokens
    decoding = None
    if gens:
        if len(temps) > 1:
            decoding = "mixed"
        else:
            t = temps.pop()
            decoding = "greedy" if t in (0, 0.0, None) else f"sampled (temperature={t})"
    return found, decoding


def judge_id(config: dict | None) -> str:
    """``"rules"`` for rule-based scoring, else ``kind:model`` of the judge that scored."""
    config = config or {}
    kind = config.get("judge")
    if not kind or kind == "refusal":
        return "rules" if not kind else "rules:refusal-patterns"
    model = config.get("model") or config.get("judge_model")
    return f"{kind}:{model}" if model else str(kind)


def describe(task: str, rows: list[dict], *, protocol: str | None = None, images: list[str] | None = None,
             config: dict | None = None, scoring: dict | None = None, max_new_tokens: int | None = None,
             prompts: list[str] | None = None, notes: list[str] | None = None) -> dict:
    """The report's protocol block for the scored response ``rows`` (see the module doc)."""
    proto = get(protocol) if protocol else None
    if proto is not None and proto.task != task:
        raise BpoError(f"protocol {protocol!r} is scored by `bpo eval {proto.task}`, not `bpo eval {task}`")
    if images is None:
        images = [i for row in rows for i in row_images(row)]
    images = [image_key(i) for i in images]
    ids = [row.get("id") for row in rows]
    tokens, decoding = generation_info(rows, max_new_tokens)
    if prompts is None:
        prompts = [row.get("prompt") for row in rows]
    block = {
        "name": proto.name if proto else task,
        "label": proto.label if proto else task,
        "evaluator": f"bpo.eval.{task}",
        "evaluator_version": EVALUATOR_VERSIONS.get(task, "1"),
        "image_list_sha256": list_sha256(images) if images else None,
        "n_images": len(set(images)) if images else None,
        "items_sha256": list_sha256(ids) if ids else None,
        "n_items": len(set(ids)) if ids else None,
        "prompt_set": prompt_set_info(prompts, proto),
        "max_new_tokens": tokens,
        "decoding": decoding,
        "judge": judge_id(config),
        "scoring": scoring or {},
    }
    pinned = sorted({(row.get("meta") or {}).get("protocol_image_list_sha256") for row in rows} - {None})
    if pinned:
        block["pinned_image_list_sha256"] = pinned[0] if len(pinned) == 1 else "mixed"
        block["complete"] = pinned == [block["image_list_sha256"]]
    if proto is not None:
        block["pinned_max_new_tokens"] = proto.max_new_tokens
        block["deviations"] = list(proto.deviations)
    if notes:
        block["notes"] = list(notes)
    return block


def protocol_from_rows(rows: list[dict], requested: str | None = None) -> str | None:
    """The protocol named in the rows' ``meta.protocol`` (set by ``bpo eval prepare``), checked against
    the one requested on the command line."""
    named = sorted({str(p) for row in rows if (p := (row.get("meta") or {}).get("protocol"))})
    if len(named) > 1:
        raise BpoError(f"the responses mix protocols ({', '.join(named)}); score each protocol's responses "
                       "separately")
    found = named[0] if named else None
    if requested and found and requested != found:
        raise BpoError(f"--protocol {requested} but the responses were prepared for protocol {found}")
    name = requested or found
    if name is not None and name not in PROTOCOLS:
        return None  # e.g. "objhal-custom": prepared, but not the pinned protocol
    return name


# Fields that must agree for two numbers to be comparable.
COMPARE_FIELDS = ("name", "evaluator", "evaluator_version", "image_list_sha256", "items_sha256", "prompt_set",
                  "max_new_tokens", "decoding", "judge", "scoring")


def protocol_mismatches(reports: list[dict]) -> list[str]:
    """One line per protocol field on which the reports differ (empty when they all agree)."""
    blocks = [r.get("protocol") for r in reports]
    if all(b is None for b in blocks):
        return []
    if any(b is None for b in blocks):
        return ["some reports have no protocol block (written before protocols were recorded)"]
    out = []
    for key in COMPARE_FIELDS:
        values = [b.get(key) for b in blocks]
        if any(v != values[0] for v in values[1:]):
            out.append(f"{key}: " + " vs ".join(_short(v) for v in values))
    return out


def _short(value) -> str:
    if isinstance(value, dict):
        value = value.get("name", "") + ":" + str(value.get("sha256", ""))[:12] if "sha256" in value else value
    text = str(value)
    return text[:12] if len(text) == 64 else text


def format_protocol(block: dict) -> str:
    """A one-line summary printed after each run."""
    ps = block.get("prompt_set") or {}
    parts = [f"protocol: {block['label']}", f"{block['evaluator']} v{block['evaluator_version']}",
             f"images {block.get('n_images') or 'n/a'}"
             + (f" (sha256 {block['image_list_sha256'][:12]})" if block.get("image_list_sha256") else ""),
             f"prompts {ps.get('name', 'n/a')}" + (f" x{ps['n']}" if ps else ""),
             f"max_new_tokens {block.get('max_new_tokens') or 'unknown'}", f"judge {block['judge']}"]
    return "; ".join(parts)


# ---- glue for the commands -------------------------------------------------------------------------------------
def for_args(task: str, args, config: dict | None) -> dict:
    """The protocol block of a judged run (mmvet, llavabench, pairwise): described from its input rows."""
    rows: list[dict] = []
    if getattr(args, "responses", None):
        rows = list(load_responses(args.responses).values())
    elif getattr(args, "records", None):
        rows = []
        for _, rec in read_jsonl(args.records):
            from bpo.data.records import message_text

            users = [m for m in rec.get("prompt") or [] if isinstance(m, dict) and m.get("role") == "user"]
            rows.append({"id": rec.get("id"), "images": rec.get("images"),
                         "prompt": message_text(users[-1]) if users else None})
    return describe(task, rows, config=config)


def explicit_options(argv: list[str]) -> set[str]:
    """The long options written on the command line (``--max-new-tokens 5`` and ``--max-new-tokens=5``)."""
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


def apply_preset(args, argv: list[str]) -> Protocol | None:
    """Set ``args``' decoding from ``--preset``; an explicit option that contradicts the preset is an error."""
    if not getattr(args, "preset", None):
        return None
    proto = get(args.preset)
    pinned = {"--max-new-tokens": ("max_new_tokens", proto.max_new_tokens), "--temperature": ("temperature", 0.0),
              "--top-p": ("top_p", 1.0)}
    given = explicit_options(argv)
    for flag, (attr, value) in pinned.items():
        if flag in given and getattr(args, attr) != value:
            raise BpoError(f"--preset {proto.name} pins {flag} {value}; drop {flag} (or drop --preset and say "
                           "so when you report the numbers)")
        setattr(args, attr, value)
    if proto.prompt is not None and getattr(args, "prompt_field", None):
        raise BpoError(f"--preset {proto.name} asks every item {proto.prompt!r}; drop --prompt-field")
    return proto


def check_records(proto: Protocol, records) -> None:
    """Records prepared for another protocol (``meta.protocol``) must not be generated with this preset."""
    other = sorted({str(p) for rec in records if (p := rec.meta.get("protocol")) and p != proto.name})
    if other:
        raise BpoError(f"--preset {proto.name}, but the records were prepared for protocol {', '.join(other)}; "
                       f"use --preset {other[0]}" + (" (or prepare separate files per protocol)" if len(other) > 1
                                                     or any(r.meta.get("protocol") == proto.name for r in records)
                                                     else ""))


def chair_protocol(args, items: list[tuple[str, dict, object]], gt_kind: str, vocab: str, config: dict) -> dict:
    """The protocol block of ``bpo eval chair`` (ObjHal / chair500 when the responses follow one)."""
    rows = [row for _, row, _ in items]
    name = protocol_from_rows(rows, getattr(args, "protocol", None))
    custom = sorted({str(p) for r in rows if (p := (r.get("meta") or {}).get("protocol")) and p not in PROTOCOLS})
    per_row = [row_images(row) for row in rows]
    if all(per_row):
        images = [i for imgs in per_row for i in imgs]
    else:  # response files made elsewhere: the ground-truth keys (COCO image ids) identify the images
        images = [f"gt:{(r.get('meta') or {}).get('image_id', rid)}" for rid, r, _ in items]
    notes = [f"prepared as {', '.join(custom)}: not the pinned protocol"] if custom else None
    return describe("chair", rows, protocol=name, images=images, config=config, notes=notes,
                    scoring={"vocab": vocab, "gt_format": gt_kind, "matcher": "bpo.data.objects (rules)"},
                    max_new_tokens=getattr(args, "max_new_tokens", None))
