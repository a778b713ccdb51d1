"""Encoding (chat template, image tokens, length budget) and the plain log-prob path."""

import pytest
import torch

from bpo.data.records import Record
from bpo.errors import BpoError, RecordError
from bpo.models.encoding import Encoder, encode_all, end_of_turn_ids
from bpo.models.loading import load, load_model
from bpo.models.logprobs import example_logps
from tests.conftest import PREF_ROWS


def _records():
    return [Record.from_dict(r) for r in PREF_ROWS]


@pytest.fixture(scope="module", params=["llava", "qwen2vl"])
def model_and_processor(request, tiny_llava, tiny_qwen2vl):
    path = tiny_llava if request.param == "llava" else tiny_qwen2vl
    return load(path)


def _manual_logp(model, ids, n_prompt, vision, extras):
    """Independent reference: one unpadded row, full logits, explicit loop over response tokens."""
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    for k, v in extras.items():
        inputs[k] = torch.tensor([v + [0] * (len(ids) - len(v))])
    inputs.update(vision)
    logits = model(**inputs).logits[0].float()
    total = 0.0
    for pos in range(n_prompt, len(ids)):
        total += torch.log_softmax(logits[pos - 1], -1)[ids[pos]].item()
    return total


def test_example_logps_match_manual(model_and_processor, image_root):
    model, proc = model_and_processor
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records()]
    with torch.no_grad():
        logps, counts, valid = example_logps(model, examples, proc.tokenizer.pad_token_id)
    assert logps.shape == (4, 4)
    assert valid.sum().item() == sum(e.n_responses for e in examples)
    for b, ex in enumerate(examples):
        for k, resp in enumerate(ex.response_ids):
            ref = _manual_logp(model, ex.prompt_ids + resp, len(ex.prompt_ids), ex.vision, ex.token_extras)
            assert abs(logps[b, k].item() - ref) < 1e-4
            assert counts[b, k].item() == len(resp)
    # padding columns are exactly zero and marked invalid
    assert not valid[1, 2] and logps[1, 2].item() == 0.0


def test_image_tokens_counted_and_eot(model_and_processor, image_root):
    model, proc = model_and_processor
    enc = Encoder(proc, image_root)
    ex = enc.encode(_records()[0])
    assert ex.n_image_tokens > 0
    assert ex.response_ids[0][-1] == end_of_turn_ids(proc)[0]
    blind = enc.encode(_records()[0].without_images())
    assert blind.n_image_tokens == 0 and not blind.vision


def test_length_budget_never_cuts_image_tokens(tiny_llava, image_root):
    _, proc = load(tiny_llava)
    rec = _records()[0]
    probe = Encoder(proc, image_root, max_length=10_000).encode(rec)
    n_prompt = len(probe.prompt_ids)
    # Budget between prompt and prompt+response: drop by default, naming the record and the image tokens.
    enc = Encoder(proc, image_root, max_length=n_prompt + 3)
    with pytest.raises(RecordError, match=r"record 'r1': too long: \d+ prompt tokens \(16 of them image tokens\)"):
        enc.encode(rec)
    dropped = []
    assert encode_all(enc, [rec], dropped=dropped) == [] and "r1" in str(dropped[0])
    # truncate_response cuts responses only, keeping the end-of-turn token, never the prompt.
    trunc = Encoder(proc, image_root, max_length=n_prompt + 3, on_overlength="truncate_response")
    ex = trunc.encode(rec)
    assert ex.prompt_ids == probe.prompt_ids
    assert all(len(r) <= 3 and r[-1] == trunc.eot[0] for r in ex.response_ids)
    # A prompt that alone exceeds the budget is dropped even with truncate_response.
    with pytest.raises(RecordError, match="too long"):
        Encoder(proc, image_root, max_length=n_prompt - 1, on_overlength="truncate_response").encode(rec)


def test_missing_and_corrupt_images_name_the_record(tiny_llava, image_root):
    _, proc = load(tiny_llava)
    enc = Encoder(proc, image_root)
    rec = _records()[0]
    rec.images = ["nope.png"]
    with pytest.raises(RecordError, match="record 'r1': image 'nope.png' not found"):
        enc.encode(rec)
    rec.images = ["corrupt.png"]
    with pytest.raises(RecordError, match="corrupt"):
        enc.encode(rec)
    rec.images = ["../escape.png"]
    with pytest.raises(RecordError, match="escapes the image root"):
        enc.encode(rec)


def test_unknown_model_path_is_clear():
    with pytest.raises(BpoError, match="does not exist"):
        load_model("./no/such/model")
