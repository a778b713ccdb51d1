"""Preference records: one schema for every stage (bootstrap, train, eval)."""

from bpo.data.records import Message, Negative, Record, read_records, write_records

__all__ = ["Message", "Negative", "Record", "read_records", "write_records"]
