"""User-facing errors.

A :class:`BpoError` is printed by the CLI as one line (``error: ...``) with no traceback. Its message
must name the file, the line or record id when there is one, and the fix.
"""

from __future__ import annotations


class BpoError(Exception):
    """An error caused by user input or environment, reported as one line."""


class RecordError(BpoError):
    """A problem with one input record; ``where`` is ``file:line`` and ``record_id`` the record's id."""

    def __init__(self, message: str, *, where: str | None = None, record_id: str | None = None):
        self.where = where
        self.record_id = record_id
        self.reason = message
        prefix = ""
        if where:
            prefix += f"{where}: "
        if record_id is not None:
            prefix += f"record {record_id!r}: "
        super().__init__(prefix + message)
