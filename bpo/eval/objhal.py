"""Pinned CHAIR protocols: rule-based Object HalBench (``objhal``) and 500-image CHAIR (``chair500``).

``bpo eval prepare objhal`` pins RLHF-V's Object HalBench: 300 COCO images, each asked one of the 8
published instructions (:data:`bpo.eval.protocols.OBJHAL_PROMPTS`). bpo does not ship the 300 image ids
(they are not in any source this project could read, and inventing them would fake the protocol). Pass
either RLHF-V's own question file (``obj_halbench_300_with_image.jsonl``, rows ``{"image_id",
"question", "image": <base64>, ...}``; ``--write-images DIR`` decodes the embedded images) or a file of
image ids (one per line, or a JSON list), which get the 8 prompts in rotation. A list that is not 300
distinct ids, or a question outside the 8, is prepared as ``objhal-custom`` and said so.

``bpo eval prepare chair500`` draws 500 images from a COCO instances file (``instances_val2014.json``)
with a fixed seed (sorted ids, ``random.Random(seed).sample``), or takes ``--image-ids``, and asks each
"Please describe this image in detail.".

Both write ``meta.protocol`` and ``meta.protocol_image_list_sha256`` (the hash of the image file names),
and, given ``--instances``, ``meta.objects`` (the image's COCO categories), so the records file itself is
the ground truth of ``bpo eval chair``. The report is labelled "ObjHal (rule-based)": never the
GPT-scored number.
"""

from __future__ import annotations

import base64
import binascii
import random
from pathlib import Path

from bpo.errors import BpoError, RecordError
from bpo.eval import protocols
from bpo.io import read_json, read_jsonl

IMAGE_TEMPLATE = "COCO_val2014_{image_id:012d}.jpg"
CHAIR500_SEED = 0


def read_image_ids(path) -> list[int]:
    """COCO image ids from a JSON list or a text file with one id per line (``#`` comments allowed)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        values = read_json(path, "image id list")
        if not isinstance(values, list):
            raise BpoError(f"{path}: expected a JSON list of COCO image ids")
        items = [(f"{path}[{i}]", v) for i, v in enumerate(values)]
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise BpoError(f"{path}: image id list not found") from None
        items = [(f"{path}:{n}", line.split("#")[0].strip()) for n, line in enumerate(lines, 1)]
        items = [(w, v) for w, v in items if v]
    ids = []
    for where, v in items:
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, str) and v.isdigit())):
            raise RecordError(f"expected a COCO image id (an integer), got {v!r}", where=where)
        ids.append(int(v))
    if len(set(ids)) != len(ids):
        raise BpoError(f"{path}: duplicate image ids; each image is asked once")
    if not ids:
        raise BpoError(f"{path}: no image ids")
    return ids


def coco_index(path) -> tuple[dict[int, str], dict[int, list[str]]]:
    """``(file names, category names)`` per image id of a COCO instances file."""
    data = read_json(path, "COCO instances file")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                     "categories")):
        raise BpoError(f"{path}: not a COCO instances file (needs images, annotations, categories)")
    try:
        cats = {c["id"]: c["name"] for c in data["categories"]}
        files = {int(im["id"]): im.get("file_name") or IMAGE_TEMPLATE.format(image_id=int(im["id"]))
                 for im in data["images"]}
        objects: dict[int, list[str]] = {i: [] for i in files}
        for a in data["annotations"]:
            name = cats[a["category_id"]]
            if name not in objects.setdefault(int(a["image_id"]), []):
                objects[int(a["image_id"])].append(name)
    except (KeyError, TypeError, ValueError) as exc:
        raise BpoError(f"{path}: malformed COCO instances file ({exc!r})") from None
    return files, objects


def _records(name: str, entries: list[tuple[int, str, int | None]], image_prefix: str,
             files: dict[int, str] | None, objects: dict[int, list[str]] | None) -> list[dict]:
    """Records for ``(image_id, prompt, prompt_index)``; ``meta`` pins the protocol and the image list."""
    names = {iid: (files or {}).get(iid) or IMAGE_TEMPLATE.format(image_id=iid) for iid, _, _ in entries}
    missing = [iid for iid, _, _ in entries if objects is not None and iid not in objects]
    if missing:
        raise BpoError(f"{len(missing)} image id(s) are not in the COCO instances file (e.g. {missing[:3]}); "
                       "use the instances file of the split the images come from (val2014)")
    digest = protocols.list_sha256(names.values())
    rows = []
    for iid, prompt, index in entries:
        meta = {"benchmark": name, "protocol": name, "image_id": iid, "image": names[iid],
                "protocol_image_list_sha256": digest}
        if index is not None:
            meta["prompt_index"] = index
        if objects is not None:
            meta["objects"] = objects[iid]
        # the id is the COCO image id, so a COCO instances file and RLHF-V's answer files match it too
        rows.append({"id": str(iid), "images": [image_prefix + names[iid]],
                     "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
                     "meta": meta})
    return rows


def objhal_entries(questions=None, image_ids=None, write_images=None) -> tuple[list[tuple[int, str, int | None]],
                                                                             list[str]]:
    """``(entries, notes)`` from RLHF-V's question file or an id list; notes say why it is not pinned."""
    published = {" ".join(p.split()): i for i, p in enumerate(protocols.OBJHAL_PROMPTS)}
    entries, notes = [], []
    if questions:
        seen = set()
        for lineno, row in read_jsonl(questions):
            where = f"{questions}:{lineno}"
            iid, q = row.get("image_id"), row.get("question")
            if isinstance(iid, str) and iid.isdigit():
                iid = int(iid)
            if not isinstance(iid, int) or isinstance(iid, bool) or not isinstance(q, str) or not q.strip():
                raise RecordError("expected RLHF-V's {image_id: int, question: str, image: base64}", where=where)
            if iid in seen:
                raise RecordError("duplicate image_id", where=where, record_id=str(iid))
            seen.add(iid)
            entries.append((iid, q, published.get(" ".join(q.split()))))
            if write_images and isinstance(row.get("image"), str):
                _write_image(Path(write_images) / IMAGE_TEMPLATE.format(image_id=iid), row["image"], where)
        off = sum(1 for _, _, i in entries if i is None)
        if off:
            notes.append(f"{off} question(s) are not among RLHF-V's 8 published Object HalBench instructions")
    elif image_ids:
        entries = [(iid, protocols.OBJHAL_PROMPTS[k % 8], k % 8) for k, iid in enumerate(read_image_ids(image_ids))]
    else:
        raise BpoError("objhal needs --questions (RLHF-V's obj_halbench_300_with_image.jsonl) or --image-ids FILE; "
                       "bpo does not ship the 300 image ids")
    if len(entries) != 300:
        notes.append(f"{len(entries)} images, not Object HalBench's 300")
    return entries, notes


def _write_image(path: Path, data: str, where: str) -> None:
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError("'image' is not valid base64", where=where) from None
    if path.is_file() and path.stat().st_size == len(blob):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)


def chair500_entries(instances_files: dict[int, str] | None, image_ids=None, seed: int = CHAIR500_SEED,
                     n: int = 500) -> tuple[list[tuple[int, str, int | None]], list[str]]:
    notes = []
    if image_ids:
        ids = read_image_ids(image_ids)
    elif instances_files is not None:
        pool = sorted(instances_files)
        if len(pool) < n:
            raise BpoError(f"the instances file has {len(pool)} images, fewer than {n}")
        ids = random.Random(seed).sample(pool, n)
        if seed != CHAIR500_SEED:
            notes.append(f"seed {seed}, not the pinned seed {CHAIR500_SEED}")
    else:
        raise BpoError("chair500 needs --instances instances_val2014.json (or --image-ids FILE)")
    if len(ids) != n:
        notes.append(f"{len(ids)} images, not {n}")
    return [(iid, protocols.CHAIR500_PROMPT, None) for iid in ids], notes


def prepare(args) -> list[dict]:
    """``bpo eval prepare objhal|chair500``: the records (and notes printed when not the pinned protocol)."""
    files = objects = None
    if args.instances:
        files, objects = coco_index(args.instances)
    if args.benchmark == "objhal":
        entries, notes = objhal_entries(args.questions, args.image_ids, args.write_images)
        name = "objhal" if not notes else "objhal-custom"
    else:
        entries, notes = chair500_entries(files, args.image_ids, args.seed)
        name = "chair500" if not notes else "chair-custom"
    for note in notes:
        print(f"note: {note}; prepared as protocol {name!r}, not the pinned {args.benchmark} protocol")
    return _records(name, entries, args.image_prefix, files, objects)
