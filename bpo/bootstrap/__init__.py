"""Negative-response generators for preference data (``bpo bootstrap``).

=========  ===========  =========================================================================
generator  ``source``   what the negative is
=========  ===========  =========================================================================
weaken     weakened     the answer to a diffusion-noised image (Pi et al. image-weakened prompting)
inject     injected     the GT answer rewritten by a language model with plausible wrong details
self       self         the model's own answer to the clean image (Pi et al. Table 5 baseline)
blind      blind        the answer to the same conversation with the image removed (Li et al.)
=========  ===========  =========================================================================

Modules: ``contrast`` (two-cache contrastive decoding) and one module per generator; ``bpo bootstrap``
(:mod:`bpo.commands.bootstrap`) builds each generator directly. The generation engine they share is
:mod:`bpo.models.generation` (vLLM: :mod:`bpo.models.vllm_engine`), the resumable job runner :mod:`bpo.jobs`.
"""
