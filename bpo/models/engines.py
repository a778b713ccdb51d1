"""The generation engines by name (``--engine hf|vllm``), resolved lazily.

The registry sits in its own module, not beside :class:`bpo.models.generation.HFEngine`, because the vLLM
backend imports the shared request/settings types from ``generation``: a registry there would close a
cycle ``generation -> vllm_engine -> generation``. Here both backends are leaves.
"""

from __future__ import annotations

from bpo.registry import Registry

# name -> builder(model_path, dtype=, adapter=, image_root=, batch_size=, device=) -> engine
ENGINES = Registry("generation engine")
ENGINES.register("hf", "bpo.models.generation:build_hf_engine")
ENGINES.register("vllm", "bpo.models.vllm_engine:build_vllm_engine")
