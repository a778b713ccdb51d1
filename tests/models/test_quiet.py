"""bpo's own model loading prints no transformers progress bars, and the packed log-prob forward raises no
`past_key_values` deprecation warning per forward."""

import warnings

import pytest

from bpo.models.encoding import Encoder
from bpo.models.loading import load
from bpo.models.packed import packed_example_logps


@pytest.mark.parametrize("which", ["tiny_llava", "tiny_qwen2vl"])
def test_no_progress_bars_and_no_deprecated_cache_kwarg(which, request, image_root, capfd):
    from transformers.utils import logging as hf_logging

    from bpo.data.records import Negative, Record

    was = hf_logging.is_progress_bar_enabled()
    model, proc = load(request.getfixturevalue(which))
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled() == was  # the user's setting is restored
    rec = Record(id="r", prompt=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                 chosen="a red square", rejected=[Negative("a blue circle", "weakened")], images=["red.png"])
    ex = Encoder(proc, image_root, max_length=256).encode(rec)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        logps = packed_example_logps(model.float(), [ex], proc.tokenizer.pad_token_id)[0]
    assert logps.shape == (1, 2)
