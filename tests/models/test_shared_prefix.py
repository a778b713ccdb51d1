"""Shared-prefix log-probs equal the plain concatenated forward (values and gradients), and padding.

Parity is checked in fp32 against ``bpo.models.logprobs.example_logps`` (one row per response, the
peers' layout): summed log-probs within 1e-5, gradients of every parameter within 1e-4, for K = 1,
2, 3, prefixes padded left or right, multi-turn prompts, LLaVA (1-D RoPE) and Qwen2-VL (M-RoPE).
The sums are about -20 to -70 (~6 nats per token over 3-12 tokens), where fp32 values are spaced
2e-6 to 8e-6 apart, so 1e-5 allows the rounding of a different matmul shape and nothing more.
"""

import pytest
import torch

from bpo.data.records import Negative, Record
from bpo.errors import BpoError
from bpo.models.encoding import Encoder
from bpo.models.loading import load
from bpo.models.logprobs import collate_rows, example_logps
from bpo.models.shared_prefix import LogpsPath, collate_shared, shared_example_logps, unsupported_reason
from bpo.train.data import epoch_batches

NEGATIVES = ["a blue circle", "two green dogs on the left", "a cat"]


def _records(k: int) -> list[Record]:
    """Three prompts of different lengths (so prefixes need padding), one of them multi-turn."""
    image_turn = [{"type": "image"}, {"type": "text", "text": "describe the image"}]
    prompts = [
        [{"role": "user", "content": image_turn}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
         {"role": "assistant", "content": "a shape"},
         {"role": "user", "content": "what color is the car ? how many people are there ?"}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "is there a horse in the picture?"}]}],
    ]
    chosen = ["a red square", "the car is red", "no"]
    images = ["red.png", "green.png", "blue.png"]
    return [Record(id=f"r{i}", prompt=p, chosen=c, images=[img],
                   rejected=[Negative(t, "weakened") for t in NEGATIVES[i % 3:] + NEGATIVES[: i % 3]][:k])
            for i, (p, c, img) in enumerate(zip(prompts, chosen, images))]


@pytest.fixture(scope="module", params=["llava", "qwen2vl"])
def loaded(request, tiny_llava, tiny_qwen2vl):
    model, proc = load(tiny_llava if request.param == "llava" else tiny_qwen2vl)
    return request.param, model.float(), proc


def _run(fn, model, examples, pad_id, **kw):
    """Log-probs and the gradient of a fixed random linear function of them, for every parameter."""
    model.zero_grad(set_to_none=True)
    logps, counts, valid = fn(model, examples, pad_id, **kw)
    weights = torch.randn(logps.shape, generator=torch.Generator().manual_seed(0))
    (logps * weights).masked_fill(~valid, 0.0).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), counts, valid, grads


def _assert_parity(plain, shared):
    lp_a, n_a, v_a, g_a = plain
    lp_b, n_b, v_b, g_b = shared
    assert torch.equal(v_a, v_b) and torch.equal(n_a, n_b)
    assert (lp_a - lp_b).abs().max().item() <= 1e-5, (lp_a, lp_b)
    assert set(g_a) == set(g_b) and g_a
    worst = max((g_a[n] - g_b[n]).abs().max().item() for n in g_a)
    assert worst <= 1e-4, worst


@pytest.mark.parametrize("k", [1, 2, 3])
def test_parity_with_plain_path(loaded, image_root, k):
    which, model, proc = loaded
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records(k)]
    assert len({len(e.prompt_ids) for e in examples}) == 3  # prefixes really need padding
    model.train()  # no dropout in the tiny models; train mode is what the policy pass runs in
    pad = proc.tokenizer.pad_token_id
    plain = _run(example_logps, model, examples, pad)
    assert plain[0].shape == (3, 1 + k)
    for pad_side in ("right", "left"):
        shared = _run(shared_example_logps, model, examples, pad, pad_side=pad_side)
        # gradients reach the vision tower through the shared prefix, not only the language model
        assert any("vision" in n or "visual" in n for n in shared[3])
        _assert_parity(plain, shared)


def test_parity_lora_and_mixed_k(loaded, image_root):
    """LoRA-wrapped policy (the default), a batch with K = 3, 1, 2 and per-example padding."""
    from peft import LoraConfig, get_peft_model

    which, model, proc = loaded
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records(3)]
    examples[1].response_ids = examples[1].response_ids[:2]
    examples[2].response_ids = examples[2].response_ids[:3]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 at init would leave A without gradient: make the adapter non-zero
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    try:
        pad = proc.tokenizer.pad_token_id
        plain = _run(example_logps, peft_model, examples, pad)
        shared = _run(shared_example_logps, peft_model, examples, pad)
        assert all("lora_" in n for n in shared[3])
        _assert_parity(plain, shared)
        assert unsupported_reason(peft_model) is None
    finally:
        peft_model.unload()  # give the module-scoped model back without adapters


def test_wrong_mrope_continuation_is_caught(tiny_qwen2vl, image_root, monkeypatch):
    """The parity test can fail: continuing text positions without the rope delta gives other numbers."""
    from bpo.models import shared_prefix

    model, proc = load(tiny_qwen2vl)
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records(1)]
    pad = proc.tokenizer.pad_token_id
    with torch.no_grad():
        plain = example_logps(model, examples, pad)[0]
        real = shared_prefix._mrope_prefix_positions

        def no_delta(base, inputs):
            positions, deltas = real(base, inputs)
            assert deltas.abs().sum() > 0  # the image really compresses positions
            return positions, torch.zeros_like(deltas)

        monkeypatch.setattr(shared_prefix, "_mrope_prefix_positions", no_delta)
        wrong = shared_example_logps(model, examples, pad)[0]
    assert (plain - wrong).abs().max().item() > 1e-3


def test_collate_shared_layout(tiny_llava, image_root):
    """Prompt[:-1] once per example; each response row starts with the last prompt token."""
    model, proc = load(tiny_llava)
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records(2)]
    pad = proc.tokenizer.pad_token_id
    for side in ("left", "right"):
        b = collate_shared(examples, pad, side)
        assert b.prefix["input_ids"].shape[0] == 3 and b.seg_ids.shape[0] == 9
        assert b.prefix["pixel_values"].shape[0] == 3  # vision once per example, not per response
        assert b.prefix_len.tolist() == [len(e.prompt_ids) - 1 for e in examples]
        row = b.prefix["input_ids"][1]
        real = row[row != pad].tolist() if side == "right" else row[-b.prefix_len[1]:].tolist()
        assert real == examples[1].prompt_ids[:-1]
        assert b.seg_ids[4, : 1 + len(examples[1].response_ids[1])].tolist() == \
            [examples[1].prompt_ids[-1]] + examples[1].response_ids[1]
    assert b.example_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert b.response_index.tolist() == [0, 1, 2] * 3
    with pytest.raises(BpoError, match="pad_side"):
        collate_shared(examples, pad, "middle")


def test_fallback_auto_logs_once_and_shared_errors(tiny_llava, image_root):
    model, proc = load(tiny_llava)
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records(1)]
    pad = proc.tokenizer.pad_token_id
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    assert "gradient checkpointing" in unsupported_reason(model)
    logs = []
    auto = LogpsPath("auto", log=logs.append)
    with torch.no_grad():
        got = auto(model, examples, pad)[0]
        auto(model, examples, pad)
        want = example_logps(model, examples, pad)[0]
    assert torch.equal(got, want)
    assert len(logs) == 1 and "fast path off (gradient checkpointing" in logs[0]
    with pytest.raises(BpoError, match="fast_path=shared is not supported here: gradient checkpointing"):
        LogpsPath("shared")(model, examples, pad)
    model.eval()  # the reference pass runs in eval mode: checkpointing is off there, prefixes are shared
    assert unsupported_reason(model) is None


def test_unverified_model_type_falls_back(monkeypatch):
    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "gemma3"})()

    assert "gemma3" in unsupported_reason(Fake())
    with pytest.raises(BpoError, match="auto, shared or plain"):
        LogpsPath("fast")


# ---- less padding ------------------------------------------------------------------------------------
class _Ex:
    """Just enough of an EncodedExample for collate_rows: a prompt and one chosen + one rejected."""

    def __init__(self, n_prompt, n_resp):
        self.prompt_ids = [5] * n_prompt
        self.response_ids = [[6] * n_resp, [7] * max(1, n_resp - 2)]
        self.token_extras, self.vision = {}, {}

    def total_tokens(self):
        return sum(len(self.prompt_ids) + len(r) for r in self.response_ids)


def _pad_tokens(examples, batches):
    total = 0
    for b in batches:
        mask = collate_rows([examples[i] for i in b], pad_id=0).inputs["attention_mask"]
        total += int((mask == 0).sum())
    return total


def test_group_by_length_cuts_padding_on_skewed_lengths():
    """Mostly short examples with a long tail: grouping by length must at least halve the pad tokens."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.exp(torch.randn(400, generator=gen) * 0.9 + 3.0).long().clamp(2, 600).tolist()  # log-normal
    examples = [_Ex(20, n) for n in lengths]
    sizes = [e.total_tokens() for e in examples]
    random_pad = _pad_tokens(examples, epoch_batches(sizes, 8, seed=1, epoch=0, group_by_length=False))
    grouped = epoch_batches(sizes, 8, seed=1, epoch=0, group_by_length=True)
    grouped_pad = _pad_tokens(examples, grouped)
    assert sorted(i for b in grouped for i in b) == list(range(400))  # same examples, only regrouped
    assert grouped_pad < 0.5 * random_pad, (grouped_pad, random_pad)
