"""CHAIR object hallucination metrics (Object-HalBench protocol).

CHAIR (Rohrbach et al., 2018, "Object Hallucination in Image Captioning") compares the objects a
response mentions with the objects annotated in the image. Object-HalBench (RLHF-V, Yu et al.
2023; used by the Bootstrapped-PO paper) applies it to detailed descriptions of ~300 COCO images,
each asked with one of 8 rotating description prompts (:func:`prompt_for`).

Per response ``r`` with mentioned objects ``M_r`` (each object counted once per response, after
synonym mapping) and ground-truth objects ``G_r``:

* hallucinated ``H_r = M_r - G_r``, missed ``G_r - M_r``
* ``CHAIR_s = #{r : |H_r| >= 1} / #responses``            (response level)
* ``CHAIR_i = sum |H_r| / sum |M_r|``                       (object level; None if nothing mentioned)
* ``recall  = sum |M_r & G_r| / sum |G_r|``                 (micro; None if no ground truth)
* ``objects_per_response = sum |M_r| / #responses``

Ground truth comes from records (``meta.objects``: a list of object names, mapped through the
vocabulary) or a COCO instances JSON (``images[].id/file_name``, ``annotations[].image_id/
category_id``, ``categories[].id/name``). Ground-truth names the vocabulary does not know are
dropped from ``G_r`` (they could never be matched) and reported per item and in the counts.
Departures from the reference code: our own synonym table, singularizer and the colour rule for
"orange" (see :mod:`bpo.data.objects`); each object is counted once per response.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from bpo.data.objects import Vocabulary
from bpo.errors import BpoError, RecordError
from bpo.eval.inputs import load_truth_records
from bpo.io import read_json

# Our own wording of 8 detailed-description requests, rotated over the images as in Object-HalBench.
DESCRIPTION_PROMPTS: tuple[str, ...] = (
    "Describe this image in detail.",
    "Give a detailed description of everything you can see in this picture.",
    "What is shown in this image? Describe the scene thoroughly.",
    "Write a detailed caption for this image, mentioning the objects in it.",
    "Explain in detail what is happening in this photo.",
    "Provide a thorough description of the image, including the objects and where they are.",
    "Look at this picture carefully and describe its contents in detail.",
    "Describe the scene in this image as completely as you can.",
)


def description_prompts() -> list[str]:
    """The 8 detailed-description prompts, in rotation order."""
    return list(DESCRIPTION_PROMPTS)


def prompt_for(image_index: int) -> str:
    """The prompt for the ``image_index``-th image (0-based) of an eval set: prompts rotate."""
    if image_index < 0:
        raise BpoError(f"image_index must be >= 0, got {image_index}")
    return DESCRIPTION_PROMPTS[image_index % len(DESCRIPTION_PROMPTS)]


# ---- metric ---------------------------------------------------------------------------------------
def chair_item(vocab: Vocabulary, response: str, gt: list[str]) -> dict:
    """Per-response CHAIR details: mentioned / hallucinated / gt / missed canonical objects."""
    mentions, skipped = vocab.find(response)
    mentioned = list(dict.fromkeys(m.canonical for m in mentions))
    gt_set = list(dict.fromkeys(gt))
    words: dict[str, list[str]] = {}
    for m in mentions:
        words.setdefault(m.canonical, [])
        if m.text not in words[m.canonical]:
            words[m.canonical].append(m.text)
    return {
        "mentioned": mentioned,
        "hallucinated": [o for o in mentioned if o not in gt_set],
        "gt": gt_set,
        "missed": [o for o in gt_set if o not in mentioned],
        "words": words,
        "skipped_ambiguous": [s.text for s in skipped],
    }


def chair_metrics(items: list[dict]) -> dict:
    """Aggregate per-response details (from :func:`chair_item`) into CHAIR_s, CHAIR_i, recall."""
    n = len(items)
    if n == 0:
        raise BpoError("CHAIR needs at least one response")
    n_mentioned = sum(len(d["mentioned"]) for d in items)
    n_halluc = sum(len(d["hallucinated"]) for d in items)
    n_gt = sum(len(d["gt"]) for d in items)
    n_hit = sum(len(d["gt"]) - len(d["missed"]) for d in items)
    return {
        "chair_s": sum(1 for d in items if d["hallucinated"]) / n,
        "chair_i": n_halluc / n_mentioned if n_mentioned else None,
        "recall": n_hit / n_gt if n_gt else None,
        "objects_per_response": n_mentioned / n,
        "n": n,
        "n_mentioned": n_mentioned,
        "n_hallucinated": n_halluc,
        "n_gt_objects": n_gt,
    }


def evaluate_chair(pairs: list[tuple[str, str, list[str]]], vocab: Vocabulary) -> tuple[dict, list[dict]]:
    """CHAIR over ``(id, response, gt_objects)`` triples; returns ``(metrics, per-item details)``."""
    details = []
    for rid, response, gt in pairs:
        d = chair_item(vocab, response, gt)
        details.append({"id": rid, **d})
    return chair_metrics(details), details


# ---- ground truth ---------------------------------------------------------------------------------
class ObjectTruth:
    """Ground truth keyed by id: ``entries[id] = {"objects": [canonical...], "unknown": [names]}``.

    ``unknown`` holds the ground-truth names the vocabulary could not map (dropped from ``G_r``).
    """

    def __init__(self, kind: str):
        self.kind = kind  # "records" or "coco"
        self.entries: dict[str, dict] = {}
        self.aliases: dict[str, str] = {}  # COCO: file name / stem -> image id

    def add(self, key: str, names: list[str], vocab: Vocabulary) -> None:
        objects, unknown = [], []
        for name in names:
            canon = vocab.canonical(name)
            if canon is None:
                unknown.append(name)
            else:
                objects.append(canon)
        self.entries[key] = {"objects": list(dict.fromkeys(objects)),
                             "unknown": list(dict.fromkeys(unknown))}

    def key_for(self, rid: str, row: dict) -> str | None:
        """Which ground-truth entry a response row belongs to.

        Tried in order: the row id as an image id, file name or file stem; ``meta.image_id``; the
        file name of ``image``, ``meta.image`` or ``images[*]``.
        """
        image_id = (row.get("meta") or {}).get("image_id")
        for cand in (rid, None if image_id is None else str(image_id)):
            if cand in self.entries:
                return cand
            if cand in self.aliases:
                return self.aliases[cand]
        for image in _row_images(row):
            name = PurePosixPath(image.replace("\\", "/")).name
            for cand in (name, PurePosixPath(name).stem):
                if cand in self.aliases:
                    return self.aliases[cand]
        return None


def _row_images(row: dict) -> list[str]:
    out = []
    for value in (row.get("image"), (row.get("meta") or {}).get("image")):
        if isinstance(value, str):
            out.append(value)
    images = row.get("images")
    if isinstance(images, list):
        out += [x for x in images if isinstance(x, str)]
    return out


def is_coco_instances(path: str | os.PathLike) -> bool:
    """A ``.json`` file (not JSONL) is taken as COCO instances; records are JSONL."""
    return Path(path).suffix.lower() == ".json"


def load_object_truth(path: str | os.PathLike, vocab: Vocabulary) -> ObjectTruth:
    """Read records (``meta.objects``) or a COCO instances JSON into an :class:`ObjectTruth`."""
    if is_coco_instances(path):
        return _load_coco(path, vocab)
    def extract(record: dict, rid: str, where: str) -> list[str]:
        objs = record["meta"].get("objects")
        if not isinstance(objs, list) or not all(isinstance(o, str) for o in objs):
            raise RecordError("CHAIR needs meta.objects: a list of object names in the image "
                              "(an empty list for an image with none)", where=where, record_id=rid)
        return objs

    truth = ObjectTruth("records")
    for rid, names in load_truth_records(path, extract).items():
        truth.add(rid, names, vocab)
    return truth


def _load_coco(path: str | os.PathLike, vocab: Vocabulary) -> ObjectTruth:
    data = read_json(path, "file")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict)
               or not isinstance(data.get(k), list)]
    if missing:
        raise BpoError(f"{path}: not a COCO instances file (missing list(s): {', '.join(missing)}); "
                       "pass a records JSONL with meta.objects instead, or the COCO instances_*.json")
    try:
        cats = {c["id"]: c["name"] for c in data["categories"]}
        per_image: dict[str, list[str]] = {str(im["id"]): [] for im in data["images"]}
        files = {str(im["id"]): im.get("file_name", "") for im in data["images"]}
        for i, ann in enumerate(data["annotations"]):
            image_id = str(ann["image_id"])
            if image_id not in per_image:
                raise BpoError(f"{path}: annotations[{i}] refers to unknown image_id {image_id}")
            if ann["category_id"] not in cats:
                raise BpoError(f"{path}: annotations[{i}] refers to unknown category_id {ann['category_id']}")
            per_image[image_id].append(cats[ann["category_id"]])
    except (KeyError, TypeError) as exc:
        raise BpoError(f"{path}: malformed COCO instances file (missing field {exc})") from None
    truth = ObjectTruth("coco")
    for image_id, names in per_image.items():
        truth.add(image_id, names, vocab)
        name = files[image_id]
        if name:
            truth.aliases[name] = image_id
            truth.aliases[PurePosixPath(name).stem] = image_id
    return truth
