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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bpo.errors import BpoError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
           choices: tuple | None = None, flag: str | None = None, positional: str | None = None,
           metavar: str | None = None):
    """A dataclass field with help text (and optional allowed values).

    For command configs (:func:`parse_command`): ``flag`` renames the ``--flag`` (default: the key with
    dashes), ``positional`` makes the field a positional argument with that ``nargs`` (``"1"``, ``"?"``,
    ``"*"``, ``"+"``), ``metavar`` names its value in ``--help``. A field with no default is required.
    """
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    for key, value in (("flag", flag), ("positional", positional), ("metavar", metavar)):
        if value is not None:
            meta[key] = value
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
        if value is None and raw.strip() not in ("null", "Null", "NULL", "~"):
            value = raw  # `stop=###`: YAML reads a leading # as a comment; the user meant the text
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


# ---- command configs: one dataclass per command, as flags, YAML and key=value --------------------------
#
# Every command's options are a dataclass of :func:`option` fields. :func:`parse_command` turns it into a
# command line with three equivalent spellings of each option, applied in this order:
#   defaults  <  --config FILE.yaml  <  --flags  <  key=value overrides
# so ``bpo generate --model M`` == ``bpo generate model=M`` == ``model: M`` in a YAML file. Nested dataclass
# sections are addressed as ``judge.model=...`` or ``--judge-model``. The values are coerced and checked by
# the same :func:`from_dict` as ``bpo train``'s config (unknown keys fail with a suggestion), then the
# config's ``validate()`` runs its cross-field checks.

HELP_CONFIG_EPILOG = ("every option is also a config key: --config FILE.yaml, key=value overrides; "
                      "--help-config lists them all")


def leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, type) of every non-section field of ``cls``, recursively."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _strip_optional(hints[f.name])[0]
        if _is_dataclass_type(tp):
            out.extend(leaf_fields(tp, f"{prefix}{f.name}."))
        else:
            out.append((prefix + f.name, f, hints[f.name]))
    return out


def _flag(key: str, f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + key.replace(".", "-").replace("_", "-")


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f" [default: {f.default}]" if f.default not in (None, "", False) else ""
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return f" [default: {value}]" if value else ""
    return " (required)"


def command_parser(cls: type, *, prog: str, description: str | None = None, epilog: str | None = None):
    """The argparse parser of a command config: one flag (or positional) per field, plus ``--config``,
    ``--help-config`` and ``key=value`` overrides. Values stay strings here; :func:`parse_command` types them."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog or HELP_CONFIG_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--config", metavar="FILE.yaml", help="read options from a YAML file (keys as in --help-config)")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default, and exit")
    for key, f, tp in leaf_fields(cls):
        helptext = f.metadata.get("help", "") + _default_text(f)
        choices = f.metadata.get("choices")
        if "positional" in f.metadata:
            # never required by argparse, so a positional may come from --config or key=value too;
            # parse_command reports a missing one
            nargs = {"1": "?", "+": "*"}.get(f.metadata["positional"], f.metadata["positional"])
            p.add_argument(key, nargs=nargs, help=helptext,
                           metavar=f.metadata.get("metavar", key.upper()), default=argparse.SUPPRESS)
            continue
        flag = _flag(key, f)
        if _strip_optional(tp)[0] is bool:
            p.add_argument(flag, dest=key, action="store_const", const=True, default=argparse.SUPPRESS,
                           help=helptext)
            if not flag.startswith("--no-"):
                p.add_argument("--no-" + flag[2:], dest=key, action="store_const", const=False,
                               default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            continue
        listy = typing.get_origin(_strip_optional(tp)[0]) in (list, tuple)
        p.add_argument(flag, dest=key, default=argparse.SUPPRESS, help=helptext, choices=None,
                       metavar=f.metadata.get("metavar") or ("|".join(map(str, choices)) if choices else None),
                       nargs="+" if listy else None, action="extend" if listy else "store")  # --stop A --stop B
    return p


def _split_overrides(argv: list[str], keys: set[str], has_positional: bool) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` overrides from what argparse should read. A token is an override when its key
    is a config key, or (so a typo gets "did you mean") looks like one and the command takes no positional
    argument it could be, or is close to a key."""
    import re

    rest, overrides = [], []
    sections = {k.split(".")[0] for k in keys if "." in k}
    for tok in argv:
        key, sep, _ = tok.partition("=")
        looks = bool(sep) and re.fullmatch(r"[A-Za-z_][\w.-]*", key) is not None
        known = key in keys or key.split(".")[0] in sections
        if looks and (known or not has_positional or difflib.get_close_matches(key, keys, n=1, cutoff=0.8)):
            overrides.append(tok)
        else:
            rest.append(tok)
    return rest, overrides


def parse_command(cls: type[T], argv: list[str], *, prog: str, description: str | None = None,
                  epilog: str | None = None, require: bool = True) -> T | None:
    """Parse a command line into ``cls``; None when ``--help-config`` was asked (it has printed the keys).

    ``require=False`` (``bpo pipeline`` checking a recipe before it runs) skips the checks that need files
    made by earlier steps: ``validate(require_paths=False)`` where the config's ``validate`` takes it.
    """
    fields = {k: f for k, f, _ in leaf_fields(cls)}
    has_positional = any("positional" in f.metadata for f in fields.values())
    rest, overrides = _split_overrides(list(argv), set(fields), has_positional)
    parser = command_parser(cls, prog=prog, description=description, epilog=epilog)
    # intermixed: `bpo pipeline RECIPE --dry-run name=value` (a positional list after a flag) parses
    ns = parser.parse_intermixed_args(rest) if has_positional else parser.parse_args(rest)
    if ns.help_config:
        print(f"{prog}: every option as a config key (YAML via --config, or key=value)")
        print(format_help(cls))
        return None
    data = load_yaml(ns.config) if ns.config else {}
    typed = {k: v for k, v in vars(ns).items() if k not in ("config", "help_config")}
    # YAML, then --flags, then key=value: a key given both on the command line keeps the key=value spelling
    cli: dict = {}
    for key, value in typed.items():
        _set_dotted(cli, key, value)
    data = _deep_merge(_deep_merge(data, cli), parse_overrides(overrides))
    missing = [k for k, f in fields.items() if _is_required(f) and _get_dotted(data, k) in (None, [])]
    if missing:
        key, f = missing[0], fields[missing[0]]
        spell = f.metadata.get("metavar", key.upper()) if "positional" in f.metadata else f"{_flag(key, f)} (or {key}=...)"
        raise BpoError(f"{prog}: missing {spell}")
    try:
        cfg = from_dict(cls, data)
    except BpoError as exc:
        raise BpoError(f"{prog}: {ns.config + ': ' if ns.config else ''}{exc}") from None
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        import inspect

        takes = "require_paths" in inspect.signature(validate).parameters
        validate(require_paths=require) if takes else validate()
    return cfg


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]


def _get_dotted(data: dict, dotted: str) -> Any:
    cur: Any = data
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def run_subcommands(argv: list[str], *, prog: str, description: str, table: dict) -> int:
    """Dispatch ``prog SUB ...`` where ``table[SUB] = (ConfigClass, run(cfg) -> int, one-line help)``."""
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, table)) + 2
        print(f"usage: {prog} {{{','.join(table)}}} ...\n\n{description}\n\ncommands:")
        print("\n".join(f"  {name:<{width}}{desc}" for name, (_, _, desc) in table.items()))
        print(f"\n`{prog} SUB --help` for its options; `{prog} SUB --help-config` for its config keys")
        return 0
    if argv[0] == "--help-config":
        for name, (cls, _, desc) in table.items():
            print(f"{prog} {name}: {desc}\n{format_help(cls)}\n")
        return 0
    name = _subcommand(argv, prog, table)
    cls, run, desc = table[name]
    cfg = parse_command(cls, argv[1:], prog=f"{prog} {name}", description=desc)
    return 0 if cfg is None else run(cfg)


def check_subcommands(argv: list[str], *, prog: str, table: dict) -> None:
    """Parse ``prog SUB ...`` as :func:`run_subcommands` would, with ``require=False``, and run nothing
    (``bpo pipeline`` checks every step of a recipe this way before the first one runs)."""
    name = _subcommand(argv, prog, table)
    cls, _, desc = table[name]
    parse_command(cls, argv[1:], prog=f"{prog} {name}", description=desc, require=False)


def _subcommand(argv: list[str], prog: str, table: dict) -> str:
    name = argv[0] if argv else ""
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise BpoError(f"{prog}: unknown command {name!r}{hint} (known: {', '.join(table)})")
    return name


class Command:
    """A command's three entry points from its config class and its ``run(cfg) -> exit code``: ``main`` (the
    CLI), ``parse`` and ``check`` (``bpo pipeline``'s pre-check: parse, ``require=False``, run nothing)."""

    def __init__(self, cls: type, run: Callable[[Any], int], *, prog: str, description: str | None = None,
                 epilog: str | None = None):
        self.cls, self.run, self.prog, self.description, self.epilog = cls, run, prog, description, epilog

    def parse(self, argv: list[str], require: bool = True):
        return parse_command(self.cls, argv, prog=self.prog, description=self.description, epilog=self.epilog,
                             require=require)

    def main(self, argv: list[str]) -> int:
        cfg = self.parse(argv)
        return 0 if cfg is None else self.run(cfg)  # None: --help-config printed the keys

    def check(self, argv: list[str]) -> None:
        self.parse(argv, require=False)


class CommandGroup:
    """``main`` and ``check`` of a command made of subcommands: ``table[SUB] = (ConfigClass, run, help)``."""

    def __init__(self, table: dict, *, prog: str, description: str):
        self.table, self.prog, self.description = table, prog, description

    def main(self, argv: list[str]) -> int:
        return run_subcommands(argv, prog=self.prog, description=self.description, table=self.table)

    def check(self, argv: list[str]) -> None:
        check_subcommands(argv, prog=self.prog, table=self.table)
