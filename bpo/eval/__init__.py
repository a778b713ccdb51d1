"""Evaluation: CHAIR (:mod:`.chair`), POPE (:mod:`.pope`), safety judges (:mod:`.judges`) and metrics
(:mod:`.safety`), eval reports (:mod:`.report`); response generation lives in :mod:`.generate`.

Importing this package is cheap (no torch, transformers or openai). See docs/eval.md.
"""
