"""The import floors of ``fraud`` (the rules are in ``fraud.tools.house``'s docstring).

Every module under fraud/ is parsed with ``ast`` (function-local imports included) and every
import of a package module is mapped to its floor. Within base, the leaves (``fraud.v1``,
``fraud.settings``, ``fraud.kafka_config``) import no other base module: the metrics registry,
the broker machinery and the service runner are built on them, not the other way round.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from fraud.tools import house

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def modules() -> list[house.Module]:
    return house.read_house(ROOT)


def _listing(arrows: list[house.Arrow]) -> str:
    return "\n".join(str(arrow) for arrow in arrows)


def test_every_module_is_on_a_floor(modules: list[house.Module]) -> None:
    unplaced = [m.name for m in modules if house.floor_of(m.name) is None]
    assert unplaced == [], f"modules on no floor (add them to house.FLOORS): {unplaced}"


def test_no_import_goes_to_a_later_floor(modules: list[house.Module]) -> None:
    bad = house.upward(house.floor_arrows(modules))
    assert bad == [], "imports of a later floor:\n" + _listing(bad)


def test_base_leaves_import_no_other_base_module(modules: list[house.Module]) -> None:
    bad = house.leaf_violations(modules)
    assert bad == [], "base leaves importing metrics/broker/serve:\n" + _listing(bad)


def test_kernels_import_nothing_from_fraud_but_kernels(modules: list[house.Module]) -> None:
    bad = house.kernel_violations(modules)
    assert bad == [], "kernels importing outside fraud.kernels:\n" + _listing(bad)


def test_kernels_import_only_numpy_numba_and_the_standard_library() -> None:
    allowed = {"numpy", "numba", "fraud", *sys.stdlib_module_names}
    foreign: list[str] = []
    for path in sorted((ROOT / "fraud" / "kernels").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            foreign += [
                f"{path.relative_to(ROOT)}:{node.lineno}: {name}"
                for name in names
                if name.split(".")[0] not in allowed
            ]
    assert foreign == [], "\n".join(foreign)


# --- the checker itself finds what it must -------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> list[house.Module]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return house.read_house(tmp_path)


def test_checker_finds_upward_local_relative_and_kernel_imports(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "fraud/__init__.py": "",
            "fraud/settings.py": "import fraud.metrics\n",
            "fraud/metrics.py": "from fraud.sinks.retry import X\n",
            "fraud/contracts/__init__.py": "",
            "fraud/contracts/units.py": "DAY = 1\n",
            "fraud/contracts/records.py": (
                "from . import units\ndef warm() -> None:\n    from ..windows import customer\n"
            ),
            "fraud/kernels/__init__.py": "",
            "fraud/kernels/k.py": "from fraud.contracts.units import DAY\n",
            "fraud/sinks/__init__.py": "",
            "fraud/sinks/retry.py": "from fraud.metrics import Y\nfrom fraud.worker import z\n",
            "fraud/windows/__init__.py": "",
            "fraud/windows/customer.py": "",
            "fraud/worker/__init__.py": "",
            "fraud/worker/z.py": "",
        },
    )
    found = {(a.source, a.target) for a in house.violations(modules)}
    assert found == {
        ("fraud.settings", "fraud.metrics"),  # a leaf importing a base service
        ("fraud.metrics", "fraud.sinks.retry"),  # base -> sinks
        ("fraud.contracts.records", "fraud.windows.customer"),  # relative, inside a function
        ("fraud.kernels.k", "fraud.contracts.units"),  # a kernel importing contracts
    }
    # sinks -> base and sinks -> worker go down: arrows between floors, no violation
    arrows = {(a.source, a.target) for a in house.floor_arrows(modules)}
    assert ("fraud.sinks.retry", "fraud.worker.z") in arrows
    assert ("fraud.sinks.retry", "fraud.metrics") in arrows


def test_house_report_counts_the_tree(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "fraud/__init__.py": "",
            "fraud/cli.py": "import fraud.settings\n\n\ndef main() -> None:\n    pass\n",
            "fraud/settings.py": "def big() -> int:\n    x = 1\n    x += 1\n    return x\n",
            "fraud/flat.py": "",
        },
    )
    lines = house.report(tmp_path)
    assert lines[0] == "modules: 4"
    assert lines[1] == "lines: 9"
    assert lines[2] == "largest function: big (fraud/settings.py:1, 4 lines)"
    assert "import arrows between floors: 1 module pairs (1 imports)" in lines
    assert "violations: 0" in lines
    assert "unplaced modules (on no floor, arrows left out): 1" in lines
