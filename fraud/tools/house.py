"""``python -m fraud.tools.house [ROOT]``: the numbers of the house, read from the files.

Module count, lines, the largest function and the import arrows between floors (with the
arrows that break the floor rule). It parses the sources with ``ast`` and imports nothing of the
engine, so it measures any checkout, including one whose modules it cannot place on a floor
(those are counted as unplaced and their arrows left out).

The floors, lowest first; a module may import modules of its own floor or of a floor before it:

    base < contracts < kernels < rules < model < reference < windows < scoring < worker
         < ingest < sinks < tools < top

Two further rules:

* Within base, the leaves (the generated protobuf ``fraud.v1``, ``fraud.settings`` and
  ``fraud.kafka_config``) import no other base module than each other: every floor reads them,
  so they must not pull in the metrics registry, the broker machinery or the service runner
  (``fraud.serve``), which are built on them.
* ``fraud.kernels`` imports nothing from ``fraud`` but ``fraud.kernels``: kernels see arrays only.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "base",
        (
            "fraud.v1",
            "fraud.settings",
            "fraud.kafka_config",
            "fraud.metrics",
            "fraud.broker",
            "fraud.serve",
        ),
    ),
    ("contracts", ("fraud.contracts",)),
    ("kernels", ("fraud.kernels",)),
    ("rules", ("fraud.rules",)),
    ("model", ("fraud.model",)),
    ("reference", ("fraud.reference",)),
    ("windows", ("fraud.windows",)),
    ("scoring", ("fraud.scoring",)),
    ("worker", ("fraud.worker",)),
    ("ingest", ("fraud.ingest",)),
    ("sinks", ("fraud.sinks",)),
    ("tools", ("fraud.tools",)),
    ("top", ("fraud.cli", "fraud.testing", "fraud.protogen", "fraud.__main__")),
)
FLOOR_NAMES: tuple[str, ...] = tuple(name for name, _ in FLOORS)
BASE_LEAVES: tuple[str, ...] = ("fraud.v1", "fraud.settings", "fraud.kafka_config")
KERNELS = "fraud.kernels"
PACKAGE = "fraud"


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def floor_of(module: str) -> str | None:
    """The floor of a module of the package (``None`` for one no floor holds); the package's
    own ``__init__`` is base."""
    if module == PACKAGE:
        return FLOORS[0][0]
    for name, prefixes in FLOORS:
        if any(_within(module, prefix) for prefix in prefixes):
            return name
    return None


@dataclass(frozen=True, slots=True)
class Arrow:
    """``source`` imports ``target`` at ``path:line``."""

    source: str
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} -> {self.target}"


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    path: str
    line: int
    lines: int


@dataclass
class Module:
    name: str
    path: str
    lines: int
    imports: list[Arrow] = field(default_factory=list)
    functions: list[Function] = field(default_factory=list)


def module_name(path: Path, root: Path) -> str:
    """``fraud/a/b.py`` -> ``fraud.a.b``; ``fraud/a/__init__.py`` -> ``fraud.a``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    if not is_package:
        parts.pop()
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def imports_in(
    tree: ast.AST, module: str, path: str, known: set[str], *, is_package: bool = False
) -> list[Arrow]:
    """Every import of a package module in ``tree``, function-local ones included.

    ``from a import b`` names the module ``a.b`` where that module exists, else ``a``.
    """
    found: list[Arrow] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, is_package)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if _within(target, PACKAGE):
                found.append(Arrow(module, target, path, node.lineno))
    return found


def functions_in(tree: ast.AST, path: str) -> list[Function]:
    """Every function and method, nested ones included, with its qualified name."""
    found: list[Function] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                end = child.end_lineno or child.lineno
                found.append(Function(name, path, child.lineno, end - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def _sources(root: Path) -> list[Path]:
    """The package's hand-written modules (generated ``*_pb2.py`` left out)."""
    return sorted(p for p in (root / PACKAGE).rglob("*.py") if not p.name.endswith("_pb2.py"))


def read_house(root: Path) -> list[Module]:
    """Parse every module under ``root/fraud``."""
    paths = _sources(root)
    known = {module_name(p, root) for p in paths}
    known |= {module_name(p, root) for p in (root / PACKAGE).rglob("*_pb2.py")}
    modules: list[Module] = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
        name = module_name(path, root)
        rel = str(path.relative_to(root))
        modules.append(
            Module(
                name=name,
                path=rel,
                lines=len(text.splitlines()),
                imports=imports_in(tree, name, rel, known, is_package=path.name == "__init__.py"),
                functions=functions_in(tree, rel),
            )
        )
    return modules


def floor_arrows(modules: Iterable[Module]) -> list[Arrow]:
    """Imports from one floor to another (both ends placed)."""
    arrows: list[Arrow] = []
    for module in modules:
        for arrow in module.imports:
            source, target = floor_of(arrow.source), floor_of(arrow.target)
            if source is not None and target is not None and source != target:
                arrows.append(arrow)
    return arrows


def upward(arrows: Iterable[Arrow]) -> list[Arrow]:
    """The arrows that go to a later floor than their source's."""
    bad: list[Arrow] = []
    for arrow in arrows:
        source, target = floor_of(arrow.source), floor_of(arrow.target)
        if source is None or target is None:
            continue
        if FLOOR_NAMES.index(target) > FLOOR_NAMES.index(source):
            bad.append(arrow)
    return bad


def leaf_violations(modules: Iterable[Module]) -> list[Arrow]:
    """Base leaves importing a base module that is not a leaf."""
    return [
        arrow
        for module in modules
        if any(_within(module.name, leaf) for leaf in BASE_LEAVES)
        for arrow in module.imports
        if floor_of(arrow.target) == "base"
        and not any(_within(arrow.target, leaf) for leaf in BASE_LEAVES)
    ]


def kernel_violations(modules: Iterable[Module]) -> list[Arrow]:
    """Kernel modules importing from the package outside ``fraud.kernels``."""
    return [
        arrow
        for module in modules
        if _within(module.name, KERNELS)
        for arrow in module.imports
        if not _within(arrow.target, KERNELS)
    ]


def violations(modules: Sequence[Module]) -> list[Arrow]:
    """Every arrow that breaks one of the rules, each once."""
    seen: dict[tuple[str, int, str], Arrow] = {}
    for arrow in (
        *upward(floor_arrows(modules)),
        *leaf_violations(modules),
        *kernel_violations(modules),
    ):
        seen.setdefault((arrow.path, arrow.line, arrow.target), arrow)
    return sorted(seen.values(), key=lambda a: (a.path, a.line, a.target))


def report(root: Path) -> list[str]:
    modules = read_house(root)
    functions = [f for m in modules for f in m.functions]
    largest = max(functions, key=lambda f: f.lines, default=None)
    arrows = floor_arrows(modules)
    pairs = {(a.source, a.target) for a in arrows}
    all_pairs = {(a.source, a.target) for m in modules for a in m.imports if a.source != a.target}
    unplaced = [m.name for m in modules if floor_of(m.name) is None]
    bad = violations(modules)
    out = [
        f"modules: {len(modules)}",
        f"lines: {sum(m.lines for m in modules)}",
        "largest function: "
        + (
            "none"
            if largest is None
            else f"{largest.name} ({largest.path}:{largest.line}, {largest.lines} lines)"
        ),
        f"import arrows between modules: {len(all_pairs)} module pairs",
        f"import arrows between floors: {len(pairs)} module pairs ({len(arrows)} imports)",
        f"violations: {len(bad)}",
        *(f"  {arrow}" for arrow in bad),
    ]
    if unplaced:
        out.append(f"unplaced modules (on no floor, arrows left out): {len(unplaced)}")
        out += [f"  {name}" for name in unplaced]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fraud.tools.house", description=__doc__)
    parser.add_argument(
        "root",
        nargs="?",
        type=Path,
        default=Path(__file__).resolve().parents[2],
        help="checkout to measure (the folder holding fraud/); default: this one",
    )
    args = parser.parse_args(argv)
    print("\n".join(report(args.root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
