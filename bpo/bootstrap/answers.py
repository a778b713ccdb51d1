"""The model's own answers as negatives: ``self`` (clean image) and ``blind`` (image removed).

* ``self`` (``source: self``): the answer of the model to the unchanged prompt. Pi et al. use it as a
  baseline in Table 5 (MM-Vet 32.4 vs 34.3 for weakened negatives): it shows that exposing the
  language prior on purpose is what helps, not just any self-generated negative.
* ``blind`` (``source: blind``): Li et al.'s Blind PO (arXiv 2503.14189, methods.md §2.4): the same
  conversation with every image part and image removed (:meth:`Record.without_images`; not the
  original text-only prompt), answered by the base model, greedy by default as in their
  ``infer_json.py``. The answer lacks the visual information and becomes a second rejected response.
  A record without images has no blind version (its "blind" answer would be the model's ordinary
  answer): it is passed through unchanged, with no new negative, and counted in ``passed_through``.
"""

from __future__ import annotations

from bpo.data.records import Negative, Record
from bpo.jobs import Outcome, fail, record_row
from bpo.models.generation import Request, SamplingSettings


class AnswerGenerator:
    """One negative per record: the model's answer to the clean (``self``) or image-free (``blind``) prompt."""

    def __init__(self, engine, settings: SamplingSettings, *, model: str, blind: bool):
        self.engine, self.settings, self.model_name, self.blind = engine, settings, model, blind
        self.source = "blind" if blind else "self"
        self.passed_through = 0

    def meta(self) -> dict:
        return {"generator": self.source, "model": self.model_name, "backend": self.engine.name,
                **self.settings.to_meta()}

    def fingerprint(self) -> dict:
        return self.meta()

    def process(self, records: list[Record]) -> list[Outcome]:
        out = []
        if self.blind:
            text_only = [r for r in records if not r.images]
            self.passed_through += len(text_only)
            out += [Outcome(r.id, row=record_row(r, [])) for r in text_only]
            records = [r for r in records if r.images]
        requests = [Request(r.id, r.without_images() if self.blind else r) for r in records]
        for rec, gen in zip(records, self.engine.generate(requests, self.settings)):
            if gen.error is not None:
                out.append(Outcome(rec.id, error=gen.error))
            elif not gen.text:
                out.append(fail(rec, "the model produced an empty answer (try another --seed, a temperature > 0, "
                                     "or a larger --max-new-tokens)"))
            else:
                out.append(Outcome(rec.id, row=record_row(rec, [Negative(gen.text, self.source, self.meta())])))
        return out
