"""The toy world: a small, exactly measurable world in which the papers' phenomena exist by construction.

The world and its scoring: ``world`` (scenes, grammar, the partner prior, POPE questions), ``chair``
(CHAIR counts of captions), ``safety`` (hazardous kinds and requests), ``data`` (export as bpo records).
The model: ``model`` (the LLaVA config, tokenizer, save / load of a toy model directory), ``tensors``
(training tensors through the processor), ``pretrain`` (the cached pretraining recipe), ``measure``
(model-based measurements). Shared demo plumbing: ``stages`` (staged seed runs, the public commands
in-process, report files), ``verdicts`` (paired bootstrap), ``claims`` and ``docs_tables`` (the
hallucination demo's claims, tables and docs block). The demos: ``hallucination_demo`` (Bootstrapped
PO, ``bpo demo``), ``sweep`` (its recipe sweep), ``safety_demo`` (Blind PO), ``iterative_demo``
(rounds of Bootstrapped PO).
"""
