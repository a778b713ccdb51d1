"""The ``bpo`` command: one dispatcher, lazy imports.

The top level imports nothing heavy, so ``bpo --help`` is instant. Each subcommand lives in
``bpo/commands/<name>.py`` with ``main(argv) -> int``; its heavy imports happen inside functions.
A :class:`bpo.errors.BpoError` anywhere becomes a one-line ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import sys

from bpo import __version__
from bpo.errors import BpoError

# name -> (module, one-line description). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("bpo.commands.data", "validate, import, convert and summarise preference records"),
    "bootstrap": ("bpo.commands.bootstrap", "generate negatives: weaken | inject | self | blind"),
    "train": ("bpo.commands.train", "DPO / multi-negative BPO / SFT training (LoRA or full)"),
    "generate": ("bpo.commands.generate", "run a model (+ adapter) over an eval set, resumable"),
    "eval": ("bpo.commands.eval", "chair | pope | safety | mmvet | llavabench | pairwise | compare"),
    "analyze": ("bpo.commands.analyze", "curves | noise | modality | scaling: paper figures as PNG + CSV"),
    "safety": ("bpo.commands.safety", "build MMSafe-PO style data from text-only preference data"),
    "pipeline": ("bpo.commands.pipeline", "run a recipe that chains bpo commands (resumable)"),
    "iterate": ("bpo.commands.iterate", "rounds of Bootstrapped PO from the improving policy, with a report"),
    "demo": ("bpo.commands.demo", "run the built-in toy-world pipeline end to end on CPU"),
}


def _usage() -> str:
    lines = [
        f"bpo {__version__}: Bootstrapped & Blind Preference Optimization for multimodal LLMs",
        "",
        "usage: bpo <command> [options]    (bpo <command> --help for details)",
        "",
        "commands:",
    ]
    width = max(map(len, COMMANDS)) + 2
    lines += [f"  {name:<{width}}{desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"error: unknown command {name!r}{hint}; see `bpo --help`", file=sys.stderr)
        return 2
    import importlib

    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except BpoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed work is saved and the job can be resumed", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _broken_pipe()
    except (IsADirectoryError, NotADirectoryError, PermissionError, FileNotFoundError) as exc:
        # Safety net for a reader that does not go through bpo.io yet: still one line naming the file.
        print(f"error: {exc.filename or '?'}: {exc.strerror or exc}; pass a readable file", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:
        print(f"error: an input file is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8",
              file=sys.stderr)
        return 2


def check_command(argv: list[str]) -> None:
    """Parse one ``bpo`` command line without running it (``bpo pipeline``'s check of a whole recipe).

    The command module's ``check(argv)`` parses with ``require=False``: files that earlier steps make need
    not exist yet. A usage error (argparse exits) becomes a one-line :class:`BpoError`; a command that has
    no ``check`` yet says so on stderr and passes.
    """
    import contextlib
    import importlib
    import io

    name, rest = (argv[0], argv[1:]) if argv else ("", [])
    if name not in COMMANDS:
        raise BpoError(f"{name!r} is not a bpo command (known: {', '.join(COMMANDS)})")
    check = getattr(importlib.import_module(COMMANDS[name][0]), "check", None)
    if check is None:
        print(f"note: `bpo {name}` cannot check its options before it runs; its step is checked when it runs",
              file=sys.stderr)
        return
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage), contextlib.redirect_stdout(io.StringIO()):
            check(rest)
    except SystemExit as exc:  # argparse: an unknown option, a missing argument, a bad choice
        if exc.code:
            lines = [ln for ln in usage.getvalue().splitlines() if ln.strip()]
            raise BpoError(lines[-1] if lines else f"bpo {name}: bad arguments") from None


def _broken_pipe() -> int:
    """``bpo data stats FILE | head``: the reader left; exit quietly as a SIGPIPE'd tool does (141)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not raise again
    except (OSError, ValueError):
        pass
    return 141


if __name__ == "__main__":
    raise SystemExit(main())
