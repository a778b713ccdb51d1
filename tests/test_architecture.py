"""The plan of the house, checked: every import goes down or sideways, never up, and nothing imports itself round.

The floors below are the architecture the README draws (data -> models -> bootstrap / train / eval -> analysis,
workflows, toy -> the command-line face), with the shared services on the ground. A room may import rooms on
its own floor or lower. An import counts wherever it stands (top of the file or inside a function), and so
does a lazy ``"bpo.x.y:attr"`` registry string, because both are dependencies a reader has to follow.

File cycles are checked on import statements only: a lazy registry string in module A naming module B, where
B imports a base class from A, is how a plug-in registry works, not a cycle a reader trips over.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "bpo"

# room -> floor. A room is a package under bpo/ or a top-level module; cli.py and commands/ are one room.
FLOORS = {
    "bpo": 0, "errors.py": 0, "paths.py": 0,
    "io.py": 1, "registry.py": 1, "config.py": 1,
    "data": 2,
    "models": 3, "jobs.py": 3,
    "llm.py": 4, "safeguard.py": 4,
    "train": 5, "bootstrap": 5, "safety": 5,
    "eval": 6,
    "analysis": 7,
    "pipeline.py": 8, "iterative": 8,
    "toy": 9,
    "face": 10, "__main__.py": 10,
}
_LAZY = re.compile(r"""["'](bpo(?:\.\w+)+)(?::\w+)?["']""")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "bpo"
    if parts[1] in ("cli", "commands"):
        return "face"
    return parts[1] if (ROOT / parts[1]).is_dir() else parts[1] + ".py"


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules named by import statements, modules named by lazy registry strings) of one file."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    stated = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            stated |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                stated |= ({f"{base}.{node.module}"} if node.module else {f"{base}.{a.name}" for a in node.names})
            elif node.module:
                stated.add(node.module)
                stated |= {f"{node.module}.{a.name}" for a in node.names}
    lazy = {m.group(1) for m in _LAZY.finditer(path.read_text())}
    own = {m for m in stated if m == "bpo" or m.startswith("bpo.")}
    return own, lazy


def _modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(name: str, known) -> str | None:
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in known else None


def package_arrows() -> dict[tuple[str, str], list[str]]:
    """(from room, to room) -> the files that make the arrow."""
    arrows = defaultdict(list)
    mods = _modules()
    for name, path in mods.items():
        stated, lazy = imports(path)
        for target in stated | lazy:
            a, b = room(name), room(_resolve(target, mods) or target)
            if a != b:
                arrows[(a, b)].append(name)
    return arrows


def file_cycles() -> list[list[str]]:
    """Strongly connected groups of more than one file, on import statements."""
    mods = _modules()
    graph = {name: {t for t in (_resolve(m, mods) for m in imports(p)[0]) if t and t != name}
             for name, p in mods.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_room_has_a_floor():
    rooms = {room(m) for m in _modules()}
    assert rooms <= set(FLOORS), f"new rooms need a floor in FLOORS: {sorted(rooms - set(FLOORS))}"


def test_no_arrow_points_up():
    up = {f"{a} (floor {FLOORS[a]}) -> {b} (floor {FLOORS[b]}) via {sorted(set(files))}"
          for (a, b), files in package_arrows().items() if FLOORS[b] > FLOORS[a]}
    assert not up, "\n".join(sorted(up))


def test_no_cycle_between_rooms():
    arrows = package_arrows()
    both = sorted({tuple(sorted(ab)) for ab in arrows if (ab[1], ab[0]) in arrows})
    assert not both, both


def test_no_cycle_between_files():
    assert file_cycles() == []


def test_the_checker_sees_a_cycle_and_an_upward_arrow(tmp_path, monkeypatch):
    """The checks above can fail: a made-up tree with one cycle and one upward import is caught."""
    pkg = tmp_path / "bpo"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("from bpo.data import b\nimport bpo.eval.x\n")
    (pkg / "data" / "b.py").write_text("def f():\n    from bpo.data.a import g\n")
    (pkg / "eval").mkdir()
    (pkg / "eval" / "__init__.py").write_text("")
    (pkg / "eval" / "x.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    assert file_cycles() == [["bpo.data.a", "bpo.data.b"]]
    assert ("data", "eval") in package_arrows()
