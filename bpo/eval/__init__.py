"""Evaluation: CHAIR (:mod:`.chair`), POPE (:mod:`.pope`), safety judges (:mod:`.judges`) and metrics
(:mod:`.safety`), the judged benchmarks (:mod:`.mmvet`, :mod:`.llavabench`, :mod:`.pairwise`, :mod:`.vlguard`,
:mod:`.llm_objects`) on one judging engine (:mod:`.judging`), eval reports (:mod:`.report`); response
generation lives in :mod:`.generate`. The ``bpo eval`` command line is :mod:`bpo.commands.eval`.

Importing this package is cheap (no torch, transformers or openai). See docs/eval.md.
"""
