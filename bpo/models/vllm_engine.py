"""Optional vLLM engine (``--engine vllm``): same ``generate(requests, settings)`` as :class:`HFEngine`.

UNTESTED IN CI: it needs a GPU and the ``vllm`` package, neither of which the test machines have.
It serves ``self``, ``blind``, ``inject --backend self`` and ``bpo generate``; image weakening edits
the model's inputs and always runs on the ``hf`` engine. Sampling uses vLLM's per-request seed
(derived from the same ``(seed, key)`` as the hf engine), so answers are reproducible run to run
but not token-identical to the hf engine's. Adapters are not loaded here: merge them first.
"""

from __future__ import annotations

from collections.abc import Sequence

from bpo.data.images import load_record_images
from bpo.errors import BpoError, RecordError
from bpo.models.chat import text_for_tokenizer_with_specials
from bpo.models.encoding import render_prompt
from bpo.models.generation import Generation, Request, SamplingSettings, cut_at_stop, derive_seed
from bpo.models.loading import load_processor


class VllmEngine:
    name = "vllm"

    def __init__(self, model_path: str, *, dtype: str = "auto", image_root=None, max_images: int = 4):
        try:
            import vllm
        except ImportError:
            raise BpoError("--engine vllm needs the vllm package and a GPU (pip install vllm); "
                           "or use the default --engine hf") from None
        self.vllm = vllm
        self.processor = load_processor(model_path)
        self.image_root = image_root
        self.llm = vllm.LLM(model=model_path, dtype="auto" if dtype == "float32" else dtype,
                            limit_mm_per_prompt={"image": max_images})

    def _params(self, req: Request, settings: SamplingSettings):
        seed = None if settings.greedy else derive_seed(settings.seed, req.key) % (1 << 31)
        return self.vllm.SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                                        max_tokens=settings.max_new_tokens, min_tokens=settings.min_new_tokens,
                                        stop=list(settings.stop) or None, seed=seed)

    def generate(self, requests: Sequence[Request], settings: SamplingSettings, *, batch_fn=None) -> list[Generation]:
        if batch_fn is not None or any(r.vision_transform or r.feature_transform for r in requests):
            raise BpoError("the vllm engine cannot edit model inputs (image weakening); use --engine hf")
        results: dict[str, Generation] = {}
        items, params, keys = [], [], []
        for req in requests:
            try:
                # vLLM adds the tokenizer's specials itself: never a second <bos> (Gemma 3's template writes one).
                item = {"prompt": text_for_tokenizer_with_specials(
                    self.processor.tokenizer, render_prompt(self.processor, req.record.prompt))}
                images = load_record_images(req.record, self.image_root) if req.record.images else []
            except BpoError as exc:
                results[req.key] = Generation(req.key, error=RecordError(str(exc), record_id=req.record.id))
                continue
            if images:
                item["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
            items.append(item)
            params.append(self._params(req, settings))
            keys.append(req.key)
        if items:
            for key, out in zip(keys, self.llm.generate(items, params, use_tqdm=False)):
                completion = out.outputs[0]
                text = cut_at_stop(completion.text, settings.stop).strip()
                results[key] = Generation(key, text, len(completion.token_ids))
        return [results[r.key] for r in requests]


def build_vllm_engine(model_path: str, *, dtype: str = "auto", adapter: str | None = None, image_root=None,
                      batch_size: int = 8, device=None) -> VllmEngine:
    """vLLM schedules its own batches; ``batch_size`` and ``device`` are ignored."""
    if adapter:
        raise BpoError("--engine vllm does not load adapters; merge the adapter into the model or use --engine hf")
    return VllmEngine(model_path, dtype=dtype, image_root=image_root)
