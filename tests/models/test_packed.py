"""Packed log-probs (prompt + all responses in one forward) equal plain rows, values and gradients.

Parity is checked in fp32 against ``bpo.models.logprobs.example_logps`` (one row per response, the
peers' layout): summed log-probs within 1e-5, gradients of every parameter within 1e-4, for K = 1,
2, 3 mixed in one batch, multi-turn prompts, LoRA and full fine-tuning, one example per row (SDPA and
eager masks) and several examples per row (document mask), LLaVA (1-D RoPE) and Qwen2-VL (M-RoPE).
The sums are about -20 to -70 (~6 nats per token over 3-12 tokens), where fp32 values are spaced
2e-6 to 8e-6 apart, so 1e-5 allows the rounding of a different matmul shape and nothing more.
"""

import functools

import pytest
import torch

from bpo.data.records import Negative, Record
from bpo.errors import BpoError
from bpo.models.encoding import Encoder
from bpo.models.loading import load
from bpo.models.logprobs import collate_rows, example_logps, scatter_rows
from bpo.models.packed import (
    LogpsPath,
    attn_backend,
    chunked_target_logps,
    collate_packed,
    dense_mask,
    packed_example_logps,
    packed_length,
    packed_row_logps,
    unsupported_reason,
)
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
    weights = torch.randn(logps.shape, generator=torch.Generator().manual_seed(0)).to(logps.device)
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


def _packed(capacity=None, chunk=5):
    """Packed log-probs with a small lm_head chunk (so chunking is exercised) and optional packed rows."""

    def fn(model, examples, pad_id):
        batch = collate_packed(examples, pad_id, capacity=capacity)
        if capacity:
            assert batch.doc.shape[0] < len(examples)  # several examples really share a row
        lp, n = packed_row_logps(model, batch, chunk=chunk)
        return scatter_rows(lp, n, batch, len(examples))

    return fn


def _mixed(examples):
    """K = 3, 1, 2 in one batch."""
    examples[1].response_ids = examples[1].response_ids[:2]
    examples[2].response_ids = examples[2].response_ids[:3]
    return examples


@pytest.mark.parametrize("k", [1, 2, 3])
def test_parity_with_plain_path(loaded, image_root, k):
    """Full fine-tuning (every parameter, vision tower included), one example per row and packed rows."""
    which, model, proc = loaded
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records(k)]
    if k == 3:
        examples = _mixed(examples)
    assert len({len(e.prompt_ids) for e in examples}) == 3  # rows really need padding
    model.train()  # no dropout in the tiny models; train mode is what the policy pass runs in
    pad = proc.tokenizer.pad_token_id
    plain = _run(example_logps, model, examples, pad)
    assert plain[0].shape == (3, 1 + k)
    for fn in (_packed(), _packed(capacity=2 * max(map(packed_length, examples)))):
        packed = _run(fn, model, examples, pad)
        # gradients reach the vision tower through the shared prompt, not only the language model
        assert any("vision" in n or "visual" in n for n in packed[3])
        _assert_parity(plain, packed)


def test_parity_eager_mask(loaded, image_root):
    """The additive float mask of the eager backend gives the same numbers as SDPA's boolean one."""
    which, model, proc = loaded
    enc = Encoder(proc, image_root, max_length=512)
    examples = _mixed([enc.encode(r) for r in _records(3)])
    pad = proc.tokenizer.pad_token_id
    before = attn_backend(model)
    model.set_attn_implementation("eager")
    try:
        assert attn_backend(model) == "eager"
        _assert_parity(_run(example_logps, model, examples, pad), _run(_packed(), model, examples, pad))
    finally:
        model.set_attn_implementation(before)


def test_parity_lora_and_mixed_k(loaded, image_root):
    """LoRA-wrapped policy (the default), a batch with K = 3, 1, 2 and per-example padding."""
    from peft import LoraConfig, get_peft_model

    which, model, proc = loaded
    enc = Encoder(proc, image_root, max_length=512)
    examples = _mixed([enc.encode(r) for r in _records(3)])
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B = 0 at init would leave A without gradient: make the adapter non-zero
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    try:
        pad = proc.tokenizer.pad_token_id
        plain = _run(example_logps, peft_model, examples, pad)
        packed = _run(packed_example_logps, peft_model, examples, pad)
        assert all("lora_" in n for n in packed[3])
        _assert_parity(plain, packed)
        assert unsupported_reason(peft_model) is None
    finally:
        peft_model.unload()  # give the module-scoped model back without adapters


def test_parity_with_gradient_checkpointing(tiny_llava, image_root):
    """One forward needs no KV cache, so gradient checkpointing no longer forces plain rows."""
    model, proc = load(tiny_llava)
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records(2)]
    pad = proc.tokenizer.pad_token_id
    plain = _run(example_logps, model, examples, pad)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    assert unsupported_reason(model) is None
    _assert_parity(plain, _run(packed_example_logps, model, examples, pad))
    # the recomputed last layer would run unarmed, so its rows are not restricted (read per call)
    from bpo.models.packed import _LastLayerRows

    assert _LastLayerRows.for_decoder(model.get_decoder()).checkpointed()
    model.activation_checkpointing_disable()
    assert not _LastLayerRows.for_decoder(model.get_decoder()).checkpointed()


def test_wrong_mrope_continuation_is_caught(tiny_qwen2vl, image_root, monkeypatch):
    """The parity test can fail: continuing text positions without the rope delta gives other numbers."""
    from bpo.models import packed

    model, proc = load(tiny_qwen2vl)
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records(1)]
    pad = proc.tokenizer.pad_token_id
    with torch.no_grad():
        plain = example_logps(model, examples, pad)[0]
        assert (plain - packed_example_logps(model, examples, pad)[0]).abs().max().item() <= 1e-5
        real = packed._rope_index_fn

        def no_delta(base):
            fn = real(base)

            @functools.wraps(fn)  # keeps the signature that the caller filters keyword arguments by
            def wrapped(*a, **kw):
                positions, deltas = fn(*a, **kw)
                assert deltas.abs().sum() > 0  # the image really compresses positions
                return positions, torch.zeros_like(deltas)

            return wrapped

        monkeypatch.setattr(packed, "_rope_index_fn", no_delta)
        wrong = packed_example_logps(model, examples, pad)[0]
    assert (plain - wrong).abs().max().item() > 1e-3


def test_mask_rule():
    """Prompt causal; a response sees the prompt and its own past, never another response; documents apart."""
    doc = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, -1]])
    seg = torch.tensor([[0, 0, 1, 2, 2, 0, 1, 1, -1]])
    m = dense_mask(doc, seg)[0, 0]
    assert m.shape == (9, 9)
    assert m[1].tolist()[:2] == [True, True] and not m[0, 1]  # causal prompt
    assert m[3, :2].all() and not m[3, 2] and m[3, 3]  # response 2 sees the prompt, not response 1
    assert m[4, 3] and not m[4, 2]
    assert not m[5, :5].any() and m[7, 5:8].all()  # the second example sees only itself
    assert m[8].tolist() == [False] * 8 + [True]  # padding sees itself: no fully masked row
    assert m.diagonal().all()


def test_collate_packed_layout(tiny_llava, image_root):
    """Each example once, vision once per example; each target is predicted by the token before it."""
    model, proc = load(tiny_llava)
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records(2)]
    pad = proc.tokenizer.pad_token_id
    b = collate_packed(examples, pad)
    assert b.inputs["input_ids"].shape[0] == 3 and b.example_index.shape[0] == 9
    assert b.inputs["pixel_values"].shape[0] == 3  # vision once per example, not per response
    assert b.pad_tokens == 3 * b.doc.shape[1] - sum(map(packed_length, examples)) and b.pad_tokens > 0
    ex, row = examples[1], b.inputs["input_ids"][1].tolist()
    p = len(ex.prompt_ids)
    assert row[: p] == ex.prompt_ids
    assert row[p: p + len(ex.response_ids[0])] == ex.response_ids[0]
    width = b.doc.shape[1]
    first = b.owner.tolist().index(3)  # response row 3 = example 1's chosen
    assert b.src[first].item() == width + p - 1  # the last prompt token predicts response token 0
    assert b.tgt[first].item() == ex.response_ids[0][0]
    assert b.pos[1, p: p + 2].tolist() == [p, p + 1]
    rejected = b.owner.tolist().index(4)  # ... and also token 0 of every other response of the example
    assert b.src[rejected].item() == width + p - 1 and b.pos[1, p + len(ex.response_ids[0])] == p
    assert b.example_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    packed = collate_packed(examples, pad, capacity=10_000, multiple_of=128)
    assert packed.doc.shape == (1, 128 * (-(-sum(map(packed_length, examples)) // 128)))
    assert sorted(packed.example_index.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_chunked_logps_equal_full_log_softmax():
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(37, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=gen)
    full = head(hidden).log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    g_full = torch.autograd.grad(full.sum(), [hidden, head.weight])
    chunked = chunked_target_logps(hidden, targets, head, chunk=8)
    g_chunk = torch.autograd.grad(chunked.sum(), [hidden, head.weight])
    assert (full - chunked).abs().max() <= 1e-5
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(g_full, g_chunk))


def test_flex_attention_values_on_cpu(tiny_llava, image_root, monkeypatch):
    """FlexAttention (BlockMask, all examples in one row, no padding between them), forward only: torch 2.13
    has no flex backward on CPU, so the gradients of this backend are checked on a GPU (bench/gpu_check.sh).

    transformers compiles the flex kernel on first use (~90 s of inductor on this CPU); the test calls the
    uncompiled ``flex_attention`` through the same transformers attention function instead: same masks,
    same math, without the compile time."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda q, k, v, training=False, **kw: flex.flex_attention(q, k, v, **kw))
    model, proc = load(tiny_llava)
    enc = Encoder(proc, image_root, max_length=512)
    examples = _mixed([enc.encode(r) for r in _records(3)])
    pad = proc.tokenizer.pad_token_id
    with torch.no_grad():
        plain = example_logps(model, examples, pad)[0]
        model.set_attn_implementation("flex_attention")
        stats: dict = {}
        flex = packed_example_logps(model, examples, pad, stats=stats)[0]
    assert stats["pad_tokens"] < 128  # one row, padded only to the block size
    assert (plain - flex).abs().max().item() <= 1e-5


def test_fallback_auto_logs_once_and_packed_errors(tiny_llava, image_root, monkeypatch):
    from bpo.models import packed

    model, proc = load(tiny_llava)
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records(1)]
    pad = proc.tokenizer.pad_token_id
    monkeypatch.setattr(packed, "attn_backend", lambda base: "flash_attention_2")
    assert "takes no custom mask" in unsupported_reason(model)
    logs = []
    auto = LogpsPath("auto", log=logs.append)
    with torch.no_grad():
        got = auto(model, examples, pad)[0]
        auto(model, examples, pad)
        want = example_logps(model, examples, pad)[0]
    assert torch.equal(got, want)
    assert len(logs) == 1 and "fast path off (attention backend 'flash_attention_2'" in logs[0]
    with pytest.raises(BpoError, match="fast_path=packed is not supported here: attention backend"):
        LogpsPath("shared")(model, examples, pad)


def test_unverified_model_type_falls_back():
    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "mllama"})()

    assert "mllama" in unsupported_reason(Fake())
    with pytest.raises(BpoError, match="auto, packed or plain"):
        LogpsPath("fast")


def test_pad_tokens_reported():
    from bpo.train.metrics import StepStats

    stats = StepStats()
    LogpsPath._record(stats, 30, 70)
    assert stats.means()["tokens/pad"] == 30 and stats.means()["tokens/pad_fraction"] == pytest.approx(0.3)


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


# ---- the other families: LLaVA-NeXT (anyres, image_sizes), Qwen2.5-VL, Gemma 3 -----------------------
def write_mixed_size_images(root) -> str:
    """Images of three aspect ratios, so LLaVA-NeXT picks different anyres grids (different patch counts); also
    used by bench/gpu_parity.py."""
    from PIL import Image

    for name, size, rgb in (("red.png", (40, 32), (220, 20, 20)), ("green.png", (24, 64), (20, 200, 40)),
                            ("blue.png", (80, 28), (30, 40, 230))):
        img = Image.new("RGB", size, rgb)
        img.putpixel((3, 3), (255, 255, 255))
        img.save(root / name)
    return str(root)


@pytest.fixture(scope="module")
def mixed_size_images(tmp_path_factory):
    return write_mixed_size_images(tmp_path_factory.mktemp("mixed_images"))


@pytest.mark.parametrize("family", ["llava_next", "qwen25vl"])
def test_parity_other_families(tiny_family, mixed_size_images, family):
    """Full fine-tuning and LoRA, K = 3, 1, 2 in one batch, a multi-turn prompt, images of different sizes."""
    from peft import LoraConfig, get_peft_model

    model, proc = load(tiny_family(family))
    model = model.float().train()
    enc = Encoder(proc, mixed_size_images, max_length=4096)
    examples = _mixed([enc.encode(r) for r in _records(3)])
    pad = proc.tokenizer.pad_token_id
    if family == "llava_next":
        sizes = {tuple(e.vision["image_sizes"].flatten().tolist()) for e in examples}
        assert len(sizes) == 3 and len({e.vision["pixel_values"].shape[1] for e in examples}) > 1  # anyres grids
    assert unsupported_reason(model) is None
    _assert_parity(_run(example_logps, model, examples, pad), _run(_packed(), model, examples, pad))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.05)
    _assert_parity(_run(example_logps, peft_model, examples, pad), _run(packed_example_logps, peft_model,
                                                                         examples, pad))


def test_gemma3_falls_back_with_one_line(tiny_family, image_root):
    """Gemma 3 attends bidirectionally within an image and has sliding-window layers: plain rows, said once."""
    model, proc = load(tiny_family("gemma3"))
    enc = Encoder(proc, image_root, max_length=4096)
    examples = [enc.encode(r) for r in _records(1)]
    reason = unsupported_reason(model)
    assert reason and "gemma3" in reason
    logs = []
    path = LogpsPath("auto", log=logs.append)
    with torch.no_grad():
        got = path(model, examples, proc.tokenizer.pad_token_id)[0]
        path(model, examples, proc.tokenizer.pad_token_id)
        want = example_logps(model, examples, proc.tokenizer.pad_token_id)[0]
    assert torch.equal(got, want) and len(logs) == 1 and "fast path off" in logs[0]


# ---- run.compile -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_forward_matches_eager(tiny_llava, image_root):
    """``run.compile``: the packed path through the compiled model gives the eager numbers and gradients.

    CPU default backend ``aot_eager`` (dynamo capture and AOT autograd: graph breaks, dynamic shapes, the
    mask and position tensors traced; ~1 min here). ``BPO_TEST_COMPILE_BACKEND=inductor`` adds code
    generation, ~5 min for the first step on this shared 2-core box, so it is not the default.
    """
    import os
    import shutil

    import torch._dynamo

    from bpo.models.packed import compile_model

    backend = os.environ.get("BPO_TEST_COMPILE_BACKEND", "aot_eager")
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this Python/torch build")
    if backend == "inductor" and not (shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("inductor on CPU needs a C++ compiler (none on PATH)")
    model, proc = load(tiny_llava)
    enc = Encoder(proc, image_root, max_length=512)
    examples = _mixed([enc.encode(r) for r in _records(3)])
    pad = proc.tokenizer.pad_token_id
    eager = _run(packed_example_logps, model, examples, pad)
    compile_model(model, backend=backend, log=lambda *_: None)
    try:
        compiled = _run(packed_example_logps, model, examples, pad)
    finally:
        torch._dynamo.reset()
    assert (eager[0] - compiled[0]).abs().max().item() <= 1e-5
    # a compiled graph returns zeros where eager autograd leaves None (the unused last vision layer)
    names = set(eager[3]) | set(compiled[3])
    zero = torch.zeros(())
    worst = max((eager[3].get(n, zero) - compiled[3].get(n, zero)).abs().max().item() for n in names)
    assert worst <= 1e-4 and set(eager[3]) <= set(compiled[3])


def test_sdpa_gets_an_additive_mask_outside_autocast(tiny_llava, image_root):
    """Outside autocast SDPA gets 0 / -inf in the embeddings' dtype (the same numbers as the boolean mask it would
    convert in every layer); under autocast the boolean mask stays. Built once per step and device state."""
    from bpo.models.packed import _device_tensors

    model, proc = load(tiny_llava)
    model = model.float()
    enc = Encoder(proc, image_root, max_length=512)
    batch = collate_packed([enc.encode(r) for r in _records(2)], proc.tokenizer.pad_token_id)
    _, mask, *_ = _device_tensors(model, batch, torch.device("cpu"), torch.float32)
    want = dense_mask(batch.doc, batch.seg)
    assert mask.dtype == torch.float32 and torch.equal(mask == 0, want) and torch.isinf(mask[~want]).all()
    assert _device_tensors(model, batch, torch.device("cpu"), torch.float32)[1] is mask  # reused by the next pass
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, auto_mask, *_ = _device_tensors(model, batch, torch.device("cpu"), torch.float32)
    assert auto_mask.dtype == torch.bool and torch.equal(auto_mask, want)


def _image_count_records() -> list[Record]:
    """One image, no image, two images (the second in a later turn): the counts a real batch mixes."""
    one = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image"}]}]
    none = [{"role": "user", "content": "what color is a fire truck ?"}]
    two = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]},
           {"role": "assistant", "content": "a shape"},
           {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and this one?"}]}]
    return [Record(id="one", prompt=one, chosen="a red square", images=["red.png"],
                   rejected=[Negative("a blue circle", "weakened"), Negative("a cat", "weakened")]),
            Record(id="none", prompt=none, chosen="red", images=[], rejected=[Negative("green", "weakened")]),
            Record(id="two", prompt=two, chosen="a green bar", images=["blue.png", "green.png"],
                   rejected=[Negative("two dogs", "weakened"), Negative("a red square", "weakened"),
                             Negative("nothing", "weakened")])]


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2vl", "qwen25vl"])
def test_parity_with_text_only_and_two_image_examples(tiny_family, mixed_size_images, family):
    """A batch of a one-image, a text-only and a two-image example (K = 2, 1, 3): packed equals plain rows,
    values and gradients, one example per row (the SDPA split at the shortest prompt, here the text-only one)."""
    model, proc = load(tiny_family(family))
    model = model.float().train()
    enc = Encoder(proc, mixed_size_images, max_length=4096)
    examples = [enc.encode(r) for r in _image_count_records()]
    assert [bool(e.vision) for e in examples] == [True, False, True]
    pad = proc.tokenizer.pad_token_id
    _assert_parity(_run(example_logps, model, examples, pad), _run(_packed(), model, examples, pad))


@pytest.mark.parametrize("which", ["llava", "qwen2vl"])
def test_last_layer_runs_o_proj_and_mlp_on_the_used_rows_only(which, tiny_llava, tiny_qwen2vl, image_root):
    """While a packed forward runs, the last layer's o_proj and MLP see the positions that predict a response token
    and nothing else; earlier layers and every forward outside the packed path see all positions."""
    model, proc = load(tiny_llava if which == "llava" else tiny_qwen2vl)
    model = model.float()
    enc = Encoder(proc, image_root, max_length=512)
    examples = _mixed([enc.encode(r) for r in _records(3)])
    batch = collate_packed(examples, proc.tokenizer.pad_token_id)
    layers = model.get_decoder().layers
    with torch.no_grad():
        packed_row_logps(model, batch)  # bpo's hooks are registered on first use
    seen: dict[str, list[int]] = {}

    def spy(name):  # registered after bpo's pre-hook, so it sees what the module itself gets
        return lambda mod, args: seen.setdefault(name, []).append(args[0].reshape(-1, args[0].shape[-1]).shape[0])

    handles = [layers[i].mlp.register_forward_pre_hook(spy(f"mlp{i}")) for i in (0, -1)]
    handles.append(layers[-1].self_attn.o_proj.register_forward_pre_hook(spy("o_proj-1")))
    try:
        with torch.no_grad():
            lp, _ = packed_row_logps(model, batch)
            model(input_ids=batch.inputs["input_ids"][:1, :8])  # a plain forward afterwards: all rows
    finally:
        for h in handles:
            h.remove()
    used = int(torch.unique(batch.src).numel())
    n_tokens = batch.doc.numel()
    assert used < n_tokens // 2  # the prompts' rows are really skipped
    assert seen["mlp0"] == [n_tokens, 8]
    assert seen["mlp-1"] == seen["o_proj-1"] == [used, 8]
    assert torch.isfinite(lp).all()
