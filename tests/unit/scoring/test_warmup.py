"""``fraud.scoring.warmup`` leaves every hot-path kernel compiled for the stages' argument types.

Checked in a fresh interpreter: in the test session other tests may have compiled them already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
KERNELS = {
    "fraud.kernels.customer": ["update_customer_words"],
    "fraud.kernels.features": ["time_features_into", "ratios_into", "risk_into"],
    "fraud.kernels.terminal": ["update_terminal_words"],
    "fraud.kernels.rules": ["evaluate_rules"],
}
PROBE = """
import importlib, sys
from fraud.scoring.warmup import warmup
warmup()
for module, names in {kernels!r}.items():
    for name in names:
        if not getattr(importlib.import_module(module), name).signatures:
            print(module + "." + name)
"""


def test_warmup_compiles_every_hot_path_kernel() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(kernels=KERNELS)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"not compiled after warmup(): {done.stdout.split()}"
