"""The flat MMSafe-PO exporter and importer."""

import pytest

from bpo.data.records import Negative, Record, user_turn
from bpo.errors import BpoError, RecordError
from bpo.safety.mmsafe import flatten, from_mmsafe_po, to_mmsafe_po, unflatten


def record():
    return Record(
        id="hh-3",
        prompt=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                user_turn("Is the senator in the picture a liar?", 1)],
        chosen="I have no evidence of that.",
        rejected=[Negative("Yes.", "human"), Negative("Maybe.", "blind", {"model": "x"})],
        images=["fenwick.png"],
        meta={"type": "harmless", "entity": "Quilla Fenwick", "entity_type": "PER",
              "replacement": "the person in the picture", "text_prompt": "Is Senator Fenwick a liar?",
              "mid_prompt": "Is Senator the person in the picture a liar?", "rewrite": "rules"},
    )


def test_export_format():
    row = to_mmsafe_po(record())
    assert row == {
        "id": "hh-3",
        "question": "USER: Hi ASSISTANT: Hello! USER: <image>\nIs the senator in the picture a liar? ASSISTANT:",
        "image": "fenwick.png",
        "chosen": "ASSISTANT: I have no evidence of that.",
        "rejected": "ASSISTANT: Yes.",     # the human negative, not the blind one
        "type": "harmless", "entity": "Quilla Fenwick", "entity_type": "PER",
        "replacement": "the person in the picture",
        "text_prompt": "USER: Hi ASSISTANT: Hello! USER: Is Senator Fenwick a liar? ASSISTANT:",
        "mid_prompt": "USER: Hi ASSISTANT: Hello! USER: Is Senator the person in the picture a liar? ASSISTANT:",
    }
    assert "prompt" in to_mmsafe_po(record(), prompt_key="prompt")


def test_round_trip_keeps_every_field():
    rec = record()
    back = from_mmsafe_po(to_mmsafe_po(rec))
    assert (back.id, back.prompt, back.chosen, back.images) == (rec.id, rec.prompt, rec.chosen, rec.images)
    assert [(n.text, n.source) for n in back.rejected] == [("Yes.", "human")]
    assert back.meta == {k: v for k, v in rec.meta.items() if k != "rewrite"}   # bpo-only keys are not in the format


def test_import_a_released_style_row():
    row = {"id": 12, "question": "USER: <image>\nWhat is the site visible in the image famous for? ASSISTANT:",
           "image": "500px-Tower.jpg", "chosen": "ASSISTANT: It is a landmark.", "rejected": "ASSISTANT:Nothing.",
           "type": "harmless", "entity": "Tower", "entity_type": "LOC"}
    rec = from_mmsafe_po(row, where="test.json[1]")
    assert rec.id == "12" and rec.images == ["500px-Tower.jpg"] and rec.n_image_parts() == 1
    assert rec.last_user_text() == "What is the site visible in the image famous for?"
    assert (rec.chosen, rec.rejected[0].text) == ("It is a landmark.", "Nothing.")


def test_flatten_unflatten_and_errors():
    msgs = [user_turn("a", 0), {"role": "assistant", "content": "b"}, user_turn("c", 1)]
    assert unflatten(flatten(msgs)) == msgs
    with pytest.raises(ValueError, match="must end with a USER turn"):
        unflatten("USER: a ASSISTANT: b")
    with pytest.raises(RecordError, match="test.json.2.: record '5': not a 'USER"):
        from_mmsafe_po({"id": 5, "question": "hello", "chosen": "x", "rejected": "y"}, where="test.json[2]")
    with pytest.raises(BpoError, match="no system turn"):
        flatten([{"role": "system", "content": "s"}, user_turn("a")])
