"""SDPA split at the shared prompt equals one dense-masked call, and the packed forward really takes it."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from bpo.models import prefix_attention
from bpo.models.packed import dense_mask


class _Attn(torch.nn.Module):
    """What sdpa_attention_forward reads from a decoder's attention module."""

    def __init__(self, groups: int, causal: bool = True):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, causal


def _layout(prompts: list[int], responses: list[list[int]]):
    """doc / seg of right-padded rows ``[prompt | r_0 | ... | pad]`` and the shared prefix S."""
    width = max(p + sum(r) for p, r in zip(prompts, responses)) + 2  # at least two pad tokens in every row
    doc = torch.full((len(prompts), width), -1)
    seg = torch.full((len(prompts), width), -1)
    for i, (p, rs) in enumerate(zip(prompts, responses)):
        doc[i, :p], seg[i, :p], t = i, 0, p
        for k, m in enumerate(rs):
            doc[i, t:t + m], seg[i, t:t + m] = i, k + 1
            t += m
        doc[i, t:] = len(prompts) + i  # padding: its own document, so no row is fully masked
    return doc, seg, min(prompts)


def _qkv(n, heads, kv_heads, t, d, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(n, heads, t, d, generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(n, kv_heads, t, d, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(n, kv_heads, t, d, generator=g, dtype=dtype).requires_grad_()
    return q, k, v


@pytest.mark.parametrize("additive", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_split_equals_one_dense_call(additive, kv_heads):
    """Values and gradients of q, k, v: three rows of different prompt lengths, K = 3, 1, 2, GQA and not."""
    doc, seg, s = _layout([21, 17, 25], [[5, 3, 6, 4], [7, 2], [3, 4, 5]])
    mask = dense_mask(doc, seg)
    if additive:
        mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    module = _Attn(groups=4 // kv_heads)
    split = prefix_attention.prefix_split(mask, s)
    assert split is not None and split.split == 17
    wrapped = prefix_attention._wrapper(sdpa_attention_forward)
    outs = []
    for fn, kw in ((sdpa_attention_forward, {}), (wrapped, {prefix_attention.KWARG: split})):
        q, k, v = _qkv(3, 4, kv_heads, mask.shape[-1], 8)
        out, _ = fn(module, q, k, v, mask, dropout=0.0, scaling=0.35, **kw)
        valid = (seg >= 0)[:, :, None, None]  # padded queries' outputs are never used
        (out * valid * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        outs.append((out.detach() * valid, q.grad, k.grad, v.grad))
    for a, b in zip(*outs):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-5


def test_wrapper_passes_other_calls_through(monkeypatch):
    """No keyword, another mask (the vision tower gets the same keywords), or a non-causal module: one plain
    call, exactly as transformers would make it."""
    doc, seg, s = _layout([20, 18], [[4, 4], [6]])
    mask = dense_mask(doc, seg)
    split = prefix_attention.prefix_split(mask, s)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((q.shape[2], k.shape[2], kw.get("is_causal")))
        return real(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    wrapped = prefix_attention._wrapper(sdpa_attention_forward)
    q, k, v = _qkv(2, 4, 4, mask.shape[-1], 8)
    t = mask.shape[-1]
    for module, m, kw in ((_Attn(1), mask, {}), (_Attn(1), mask.clone(), {prefix_attention.KWARG: split}),
                          (_Attn(1, causal=False), None, {prefix_attention.KWARG: split}),
                          (_Attn(1), mask, {prefix_attention.KWARG: split, "is_causal": False})):
        calls.clear()
        wrapped(module, q, k, v, m, dropout=0.0, scaling=None, **kw)
        assert calls == [(t, t, False)]
    calls.clear()
    wrapped(_Attn(1), q, k, v, mask, dropout=0.0, scaling=None, **{prefix_attention.KWARG: split})
    assert calls == [(s, s, True), (t - s, t, False)]


def test_no_split_where_it_would_not_pay():
    doc, seg, _ = _layout([10, 12], [[4], [3]])
    mask = dense_mask(doc, seg)
    assert prefix_attention.prefix_split(mask, 10) is None  # shorter than min_split
    assert prefix_attention.prefix_split(mask, mask.shape[-1]) is None
    assert prefix_attention.prefix_split(mask, 8, min_split=4).tail_mask.shape[-2] == mask.shape[-1] - 8


@pytest.mark.parametrize("which", ["llava", "qwen2vl"])
def test_packed_forward_takes_the_split(which, tiny_llava, tiny_qwen2vl, image_root, monkeypatch):
    """Every decoder layer of a packed SDPA forward makes the causal prompt call; the vision tower does not."""
    from bpo.models.encoding import Encoder
    from bpo.models.loading import load
    from bpo.models.packed import collate_packed, packed_row_logps
    from tests.models.test_packed import _records

    model, proc = load(tiny_llava if which == "llava" else tiny_qwen2vl)
    model = model.float()
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records(2)]
    batch = collate_packed(examples, proc.tokenizer.pad_token_id)
    s = min(len(e.prompt_ids) for e in examples)
    assert batch.shared_prefix == s
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((q.shape[2], k.shape[2], kw.get("is_causal"), kw.get("attn_mask") is None))
        return real(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        packed_row_logps(model, batch)
    t = batch.doc.shape[1]
    layers = model.config.get_text_config().num_hidden_layers
    assert calls.count((s, s, True, True)) == layers
    assert calls.count((t - s, t, False, False)) == layers
    assert not any(c[1] == t and c[0] == t for c in calls)  # no dense T x T call is left


def test_packed_rows_of_several_examples_are_not_split(tiny_llava, image_root):
    from bpo.models.encoding import Encoder
    from bpo.models.loading import load
    from bpo.models.packed import collate_packed, packed_length
    from tests.models.test_packed import _records

    _, proc = load(tiny_llava)
    enc = Encoder(proc, image_root, max_length=512)
    examples = [enc.encode(r) for r in _records(1)]
    packed = collate_packed(examples, proc.tokenizer.pad_token_id,
                            capacity=2 * max(map(packed_length, examples)))
    assert packed.doc.shape[0] < len(examples) and packed.shared_prefix == 0


def test_a_module_that_refuses_the_keyword_costs_the_split_not_the_step(tiny_llava, image_root, monkeypatch):
    """A vision tower that takes no extra keywords (full fine-tuning passes them to it): the forward is rerun with
    the dense mask alone, the same numbers, and the model is not offered the keyword again."""
    from bpo.models.encoding import Encoder
    from bpo.models.loading import load
    from bpo.models.packed import collate_packed, packed_row_logps
    from tests.models.test_packed import _records

    model, proc = load(tiny_llava)
    model = model.float()
    enc = Encoder(proc, image_root, max_length=512)
    batch = collate_packed([enc.encode(r) for r in _records(2)], proc.tokenizer.pad_token_id)
    with torch.no_grad():
        want = packed_row_logps(model, batch)[0]
    tower = model.model.vision_tower
    real_forward = tower.forward

    def strict_forward(pixel_values, output_hidden_states=None, return_dict=None, **kwargs):
        if prefix_attention.KWARG in kwargs:
            raise TypeError(f"forward() got an unexpected keyword argument '{prefix_attention.KWARG}'")
        return real_forward(pixel_values, output_hidden_states=output_hidden_states, return_dict=return_dict,
                            **kwargs)

    monkeypatch.setattr(tower, "forward", strict_forward)
    batch.device_cache.clear()
    with torch.no_grad():
        got = packed_row_logps(model, batch)[0]
    assert model._bpo_no_prefix_kwarg is True
    assert (got - want).abs().max().item() <= 1e-5
