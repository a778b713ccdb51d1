"""Export the toy world as ordinary bpo artifacts, so the public stages consume it like real data.

``export(world, out_dir)`` writes::

    out_dir/
      images/pref/pref-000000.png ...      # image root for every record file below
      images/eval/eval-000000.png ...
      train.jsonl      chosen-only records (describe prompt -> true caption), meta.objects: input to
                       `bpo bootstrap` (the negatives) and then `bpo train`
      chair.jsonl      eval records for `bpo eval chair` (describe prompts, meta.objects)
      pope.jsonl       eval records for `bpo eval pope` (meta.label yes/no, meta.split, meta.object)
      vocab.json       CHAIR vocabulary {canonical: [synonyms...]} for the world's objects
      world.json       the world config, partner map and popularity order (for analysis)

Training images come from the ``pref`` scene stream, disjoint from the alignment images the
pretrained model saw and from the ``eval`` images. Describe prompts rotate over the world's
phrasings, as Object-HalBench rotates its prompts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bpo.data.records import Record, user_turn, write_records
from bpo.io import atomic_write, write_json
from bpo.toy.world import DESCRIBE_PROMPTS, POPE_SPLITS, Scene, World


@dataclass
class ToyExport:
    """Where :func:`export` put things (all paths absolute)."""

    root: Path
    image_root: Path
    train: Path
    chair: Path
    pope: Path
    vocab: Path
    world: Path


def chair_vocabulary(world: World) -> dict:
    """``{"red circle": ["red circle", "red circles"], ...}`` plus the reserved keys CHAIR reads.

    The colour rule is off: every object name here is a two-word ``colour shape`` phrase, never a
    bare colour.
    """
    vocab: dict = {"_name": "bpo toy world", "_colour_rule": False}
    for kind in world.kinds:
        vocab[kind] = [kind, kind + "s"]
    return vocab


def _image_rel(scene: Scene) -> str:
    split = scene.id.split("-", 1)[0]
    return f"{split}/{scene.id}.png"


def write_image(world: World, scene: Scene, image_root: Path) -> str:
    """Write the scene's PNG under ``image_root`` (atomically); returns its relative path."""
    rel = _image_rel(scene)
    with atomic_write(image_root / rel, "wb") as fh:
        world.image(scene).save(fh, format="PNG")
    return rel


def describe_record(world: World, scene: Scene, index: int, rel: str) -> Record:
    prompt = DESCRIBE_PROMPTS[index % len(DESCRIBE_PROMPTS)]
    return Record(id=scene.id, prompt=[user_turn(prompt, 1)], chosen=world.caption(scene), images=[rel],
                  meta={"objects": scene.names})


def pope_records(world: World, scene: Scene, rel: str) -> list[Record]:
    """Balanced yes/no existence records for every POPE split of one image."""
    out = []
    for split in POPE_SPLITS:
        for k, (question, answer, obj) in enumerate(world.pope_questions(scene, split)):
            out.append(Record(id=f"{scene.id}-{split}-{k}", prompt=[user_turn(question, 1)], chosen=answer,
                              images=[rel], meta={"label": answer, "split": split, "object": obj}))
    return out


def export(world: World, out_dir: str | Path, *, n_train: int = 256, n_eval: int = 200,
           eval_split: str = "eval") -> ToyExport:
    """Write images, record files, the CHAIR vocabulary and the world description under ``out_dir``.

    ``eval_split="heldout"`` evaluates on held-out scenes instead: the demo's hyperparameter sweep uses
    it so that no choice is ever made on the reported eval images.
    """
    root = Path(out_dir).resolve()
    image_root = root / "images"
    train, chair, pope = [], [], []
    for i in range(n_train):
        scene = world.scene("pref", i)
        train.append(describe_record(world, scene, i, write_image(world, scene, image_root)))
    for i in range(n_eval):
        scene = world.scene(eval_split, i)
        rel = write_image(world, scene, image_root)
        chair.append(describe_record(world, scene, i, rel))
        pope.extend(pope_records(world, scene, rel))
    paths = ToyExport(root=root, image_root=image_root, train=root / "train.jsonl", chair=root / "chair.jsonl",
                      pope=root / "pope.jsonl", vocab=root / "vocab.json", world=root / "world.json")
    write_records(paths.train, train)
    write_records(paths.chair, chair)
    write_records(paths.pope, pope)
    write_json(paths.vocab, chair_vocabulary(world))
    write_json(paths.world, {"config": dataclasses.asdict(world.cfg), "kinds": world.kinds,
                             "partner": world.partner, "by_popularity": world.by_popularity})
    return paths
