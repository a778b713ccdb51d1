"""Blind-PO data construction ("modality interpretation", MMSafe-PO style).

Text-only preference pairs (Anthropic HH-RLHF) become multimodal ones: an entity named in the last
user turn is matched to an image from a local index and rewritten into a referring phrase ("the
person in the picture"), so the request can only be understood together with the image.

Modules, in pipeline order: :mod:`~bpo.safety.hh` (read pairs), :mod:`~bpo.safety.entities` (find
the entity), :mod:`~bpo.safety.index` (image index), :mod:`~bpo.safety.rewrite` (referring
phrase), :mod:`~bpo.safety.build` (filter and write records), :mod:`~bpo.safety.mmsafe` (flat
MMSafe-PO export). See ``docs/blind_po.md``.
"""
