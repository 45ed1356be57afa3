"""Checks shared by the option objects of the ingest edges (``GatewayConfig``, ``Pacing``)."""

from __future__ import annotations


def require_positive(options: object, *names: str) -> None:
    """Raise ValueError unless each named attribute of ``options`` is None or above 0."""
    for name in names:
        value = getattr(options, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
