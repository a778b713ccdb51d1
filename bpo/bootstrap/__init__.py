"""Negative-response generators for preference data (``bpo bootstrap``) and the engine they share.

=========  ===========  =========================================================================
generator  ``source``   what the negative is
=========  ===========  =========================================================================
weaken     weakened     the answer to a diffusion-noised image (Pi et al. image-weakened prompting)
inject     injected     the GT answer rewritten by a language model with plausible wrong details
self       self         the model's own answer to the clean image (Pi et al. Table 5 baseline)
blind      blind        the answer to the same conversation with the image removed (Li et al.)
=========  ===========  =========================================================================

Modules: ``engine`` (batched, seeded generation), ``contrast`` (two-cache contrastive decoding),
``jobs`` (resumable sharded runs and the merge), one module per generator, ``vllm_engine``
(optional). Importing this package is cheap: the registry holds lazy ``"module:attr"`` targets.
"""

from bpo.registry import Registry

GENERATORS = Registry("negative generator")
GENERATORS.register("weaken", "bpo.bootstrap.weaken:WeakenGenerator")
GENERATORS.register("inject", "bpo.bootstrap.inject:InjectGenerator")
GENERATORS.register("self", "bpo.bootstrap.answers:AnswerGenerator")
GENERATORS.register("blind", "bpo.bootstrap.answers:AnswerGenerator")

__all__ = ["GENERATORS"]
