"""Typed stage configs: dataclasses with help text, loadable from YAML, overridable as ``key=value``.

Every field is declared with :func:`option` so ``--help`` and the docs can show its meaning.
Nested dataclasses are addressed with dots (``lora.r=16``). Unknown keys are an error with a
suggestion, never ignored: a typo in a recipe must not silently train with a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from bpo.errors import BpoError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
           choices: tuple | None = None):
    """A dataclass field with help text (and optional allowed values)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, with a clear error."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise BpoError(f"config key {key!r} may not be null")
    if isinstance(value, str) and optional and value.lower() in ("none", "null", "~"):
        return None
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            if isinstance(value, bool):  # `optim.lr=true` is a typo, not 1.0
                raise ValueError(value)
            return float(value)
        if tp is str:
            if isinstance(value, (list, dict)):  # a name or path, never a YAML list/mapping
                raise ValueError(value)
            return str(value)
        if origin in (list, tuple):
            (inner,) = typing.get_args(tp)[:1] or (Any,)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v != ""] if value else []
            if not isinstance(value, (list, tuple)):
                value = [value]
            out = [_coerce(v, inner, key) if inner is not Any else v for v in value]
            return out if origin is list else tuple(out)
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            args = typing.get_args(tp)
            if len(args) == 2 and args[1] in (int, float, str, bool):
                return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
            return dict(value)
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                raise ValueError(value)
            return from_dict(tp, value, prefix=f"{key}.")
    except (TypeError, ValueError):
        raise BpoError(f"config key {key!r}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build ``cls`` from a (possibly nested) dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
            raise BpoError(f"unknown config key {prefix + key!r}{hint}")
        f = fields[key]
        choices = f.metadata.get("choices")
        if isinstance(value, bool) and choices and _strip_optional(hints[key])[0] is str:
            # YAML reads `off`/`on`/`no`/`yes` as booleans; a string option with such a choice means the word.
            words = ("off", "false", "no") if not value else ("on", "true", "yes")
            value = next((c for c in choices if str(c).lower() in words), value)
        val = _coerce(value, hints[key], prefix + key)
        if choices and val is not None and val not in choices:
            raise BpoError(f"config key {prefix + key!r}: {val!r} is not one of {', '.join(map(str, choices))}")
        kwargs[key] = val
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise BpoError(f"config {cls.__name__}: {exc}") from None


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["a=1", "lora.r=8"]`` -> nested dict; values are parsed as YAML scalars (``1e-5``, ``true``)."""
    import yaml

    data: dict = {}
    for item in overrides:
        if "=" not in item:
            raise BpoError(f"override {item!r} must look like key=value (e.g. lr=1e-5 or lora.r=16)")
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    return data


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.exists():
        raise BpoError(f"{path}: config file not found")
    try:
        from bpo.io import read_text

        data = yaml.safe_load(read_text(path, "config file")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise BpoError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise BpoError(f"{path}: a config must be a YAML mapping")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                section: str | None = None) -> T:
    """YAML file (optionally one ``section`` of it), then ``key=value`` overrides, then validation."""
    data: dict = {}
    if path is not None:
        data = load_yaml(path)
        if section is not None:
            data = data.get(section) or {}
    if overrides:
        data = _deep_merge(data, parse_overrides(overrides))
    try:
        return from_dict(cls, data)
    except BpoError as exc:
        where = f"{path}: " if path else ""
        raise BpoError(f"{where}{exc}") from None


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, recursively: used by ``--help-config`` and the docs."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if _is_dataclass_type(_strip_optional(tp)[0]):
            rows.extend(describe(_strip_optional(tp)[0], prefix + f.name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((prefix + f.name, default, f.metadata.get("help", "")))
    return rows


def format_help(cls: type) -> str:
    rows = describe(cls)
    width = max(len(r[0]) for r in rows) + 2
    return "\n".join(f"  {k:<{width}}{h} [default: {d}]" for k, d, h in rows)
