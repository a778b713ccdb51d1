"""CHAIR on hand-written captions, the rotating description prompts, and COCO ground truth."""

import json

import pytest

from bpo.data.objects import Vocabulary
from bpo.errors import BpoError
from bpo.eval.chair import (
    chair_item,
    chair_metrics,
    description_prompts,
    evaluate_chair,
    load_object_truth,
    prompt_for,
)
from bpo.eval.inputs import join

CASES = [  # (id, response, ground-truth names)
    ("c1", "A man throws a frisbee to his puppy on the grass.", ["person", "dog", "frisbee"]),
    ("c2", "An orange and white cat sleeps on a sofa next to a remote.", ["cat", "couch"]),
    ("c3", "A woman eats a hot dog while two dogs watch.", ["hot dog", "person"]),
    ("c4", "A bowl of oranges sits on a table.", ["orange", "bowl", "dining table"]),
    ("c5", "A teddy bear lies on a bed beside a cell phone and a laptop.", ["teddy bear", "bed"]),
    ("c6", "A red bus stops at the traffic lights.", ["bus", "person", "traffic light"]),
    ("c7", "A tennis player in an orange shirt swings a racquet at the ball. The player is happy.",
     ["person", "tennis racket", "sports ball"]),
    ("c8", "Two giraffes stand near an elephant.", ["giraffe", "tree"]),
]


def test_chair_by_hand():
    """Mentioned / hallucinated per caption (each object once per caption):

    c1 {person, frisbee, dog} / {}          c2 {cat, couch, remote} / {remote}   ("orange" is a colour)
    c3 {person, hot dog, dog} / {dog}       c4 {bowl, orange, dining table} / {}
    c5 {teddy bear, bed, cell phone, laptop} / {cell phone, laptop}
    c6 {bus, traffic light} / {} (person missed)
    c7 {person, tennis racket, sports ball} / {} ("player" twice counts once; orange shirt skipped)
    c8 {giraffe, elephant} / {elephant} ("tree" is not a COCO object: dropped from the ground truth)

    mentioned = 3+3+3+3+4+2+3+2 = 23, hallucinated = 0+1+1+0+2+0+0+1 = 5
    CHAIR_s = 4/8 (c2, c3, c5, c8); CHAIR_i = 5/23
    ground truth = 3+2+2+3+2+3+3+1 = 19, of which mentioned 19 - 1 (c6 person) = 18 -> recall 18/19
    objects per response = 23/8
    """
    vocab = Vocabulary.coco()
    pairs = []
    for rid, response, names in CASES:
        gt = [c for c in (vocab.canonical(n) for n in names) if c]
        pairs.append((rid, response, gt))
    metrics, details = evaluate_chair(pairs, vocab)
    assert metrics["chair_s"] == pytest.approx(4 / 8)
    assert metrics["chair_i"] == pytest.approx(5 / 23)
    assert metrics["recall"] == pytest.approx(18 / 19)
    assert metrics["objects_per_response"] == pytest.approx(23 / 8)
    assert (metrics["n"], metrics["n_mentioned"], metrics["n_hallucinated"], metrics["n_gt_objects"]) == (8, 23, 5, 19)
    by_id = {d["id"]: d for d in details}
    assert by_id["c2"]["hallucinated"] == ["remote"] and by_id["c2"]["skipped_ambiguous"] == ["orange"]
    assert by_id["c3"]["hallucinated"] == ["dog"]
    assert by_id["c5"]["hallucinated"] == ["cell phone", "laptop"]
    assert by_id["c6"]["missed"] == ["person"]
    assert by_id["c7"]["mentioned"] == ["person", "tennis racket", "sports ball"]
    assert by_id["c7"]["words"]["person"] == ["tennis player", "player"]


def test_no_mentions_gives_undefined_chair_i():
    metrics = chair_metrics([chair_item(Vocabulary.coco(), "A blurry photo.", [])])
    assert metrics["chair_s"] == 0.0 and metrics["chair_i"] is None and metrics["recall"] is None
    with pytest.raises(BpoError):
        chair_metrics([])


def test_description_prompts_snapshot():
    assert description_prompts() == [
        "Describe this image in detail.",
        "Give a detailed description of everything you can see in this picture.",
        "What is shown in this image? Describe the scene thoroughly.",
        "Write a detailed caption for this image, mentioning the objects in it.",
        "Explain in detail what is happening in this photo.",
        "Provide a thorough description of the image, including the objects and where they are.",
        "Look at this picture carefully and describe its contents in detail.",
        "Describe the scene in this image as completely as you can.",
    ]
    assert prompt_for(0) == prompt_for(8) == "Describe this image in detail."
    assert prompt_for(11) == description_prompts()[3]
    with pytest.raises(BpoError):
        prompt_for(-1)


def _coco_file(tmp_path):
    data = {
        "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"},
                   {"id": 7, "file_name": "COCO_val2014_000000000007.jpg"},
                   {"id": 9, "file_name": "COCO_val2014_000000000009.jpg"}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 62, "name": "chair"}],
        "annotations": [{"image_id": 42, "category_id": 18}, {"image_id": 42, "category_id": 18},
                        {"image_id": 7, "category_id": 1}, {"image_id": 7, "category_id": 62}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_ground_truth_and_image_matching(tmp_path):
    truth = load_object_truth(_coco_file(tmp_path), Vocabulary.coco())
    assert truth.kind == "coco"
    assert truth.entries["42"]["objects"] == ["dog"]  # two dog boxes, one object
    assert truth.entries["7"]["objects"] == ["person", "chair"]
    responses = {
        "42": {"response": "A dog."},                                          # by image id
        "q-1": {"response": "A man on a chair.", "images": ["val2014/COCO_val2014_000000000007.jpg"]},
        "COCO_val2014_000000000009": {"response": "A cat."},                   # by file stem
        "pope-3": {"response": "A dog again.", "meta": {"image_id": 42}},       # by meta.image_id
    }
    joined = join(responses, truth.entries, truth_is_superset=True, key=truth.key_for)
    assert [(rid, e["objects"]) for rid, _, e in joined.items] == [("42", ["dog"]), ("q-1", ["person", "chair"]),
                                                                    ("COCO_val2014_000000000009", []),
                                                                    ("pope-3", ["dog"])]
    with pytest.raises(BpoError, match="1 response id"):
        join({"nope": {"response": "x"}, **responses}, truth.entries, truth_is_superset=True, key=truth.key_for)


def test_not_a_coco_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(BpoError, match="not a COCO instances file"):
        load_object_truth(path, Vocabulary.coco())
