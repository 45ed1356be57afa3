"""Model tables: trained models exported as arrays, scored by numba kernels, explained by reasons.

* ``fraud.model.table``: ``ModelTable``, the JSON file format, validation, ``check_features``.
* ``fraud.model.scoring``: ``score`` (scores and contributions), ``top_reasons``, ``warmup``.
* ``fraud.model.export``: ``from_logistic`` / ``from_gradient_boosting`` (training time; imports
  scikit-learn lazily, inside the functions).
"""

from __future__ import annotations

from fraud.model.scoring import score, top_reasons, warmup
from fraud.model.table import (
    ModelTable,
    ModelTableError,
    check_features,
    load_model_table,
    save_model_table,
)

__all__ = [
    "ModelTable",
    "ModelTableError",
    "check_features",
    "load_model_table",
    "save_model_table",
    "score",
    "top_reasons",
    "warmup",
]
