"""Latency recording (HDR histogram), tables, JSON and PNG for the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# 1 us .. 10 min, 3 significant digits.
_LOWEST_US = 1
_HIGHEST_US = 600_000_000


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1m": os.getloadavg()[0],
    }


@dataclass
class LatencyRecorder:
    """Latencies in microseconds: an HDR histogram for percentiles, and every sample with the
    second (since start) it was scheduled in, for the over-time plot."""

    histogram: HdrHistogram = field(
        default_factory=lambda: HdrHistogram(_LOWEST_US, _HIGHEST_US, 3)
    )
    at_s: list[float] = field(default_factory=list)
    latency_us: list[int] = field(default_factory=list)

    def record(self, at_s: float, latency_s: float) -> None:
        us = min(max(int(latency_s * 1e6), _LOWEST_US), _HIGHEST_US)
        self.histogram.record_value(us)
        self.at_s.append(at_s)
        self.latency_us.append(us)

    @property
    def count(self) -> int:
        return int(self.histogram.get_total_count())

    def summary_ms(self) -> dict[str, float]:
        """p50, p90, p99, p99.9 and max in milliseconds (NaN when empty)."""
        if not self.count:
            return {**{f"p{p:g}": float("nan") for p in PERCENTILES}, "max": float("nan")}
        out = {f"p{p:g}": self.histogram.get_value_at_percentile(p) / 1000.0 for p in PERCENTILES}
        out["max"] = self.histogram.get_max_value() / 1000.0
        return out

    def over_time(self, bucket_s: float = 1.0) -> list[dict[str, float]]:
        """Per ``bucket_s`` of schedule time: p50, p99 and max in ms."""
        if not self.at_s:
            return []
        at = np.asarray(self.at_s)
        lat = np.asarray(self.latency_us, dtype=np.float64) / 1000.0
        bucket = np.floor(at / bucket_s).astype(np.int64)
        rows = []
        for b in np.unique(bucket):
            sel = lat[bucket == b]
            rows.append(
                {
                    "t_s": float(b * bucket_s),
                    "p50_ms": float(np.percentile(sel, 50)),
                    "p99_ms": float(np.percentile(sel, 99)),
                    "max_ms": float(sel.max()),
                    "n": int(sel.size),
                }
            )
        return rows

    def distribution(self) -> tuple[list[float], list[float]]:
        """(percentile, latency ms) pairs for a percentile-distribution plot."""
        ps = [50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100]
        if not self.count:
            return [], []
        return [float(p) for p in ps], [
            self.histogram.get_value_at_percentile(p) / 1000.0 for p in ps
        ]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table: numbers right-aligned with thousands separators."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "-"
            return f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    for r in text:
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


def plot_latency(
    path: Path, title: str, recorder: LatencyRecorder, target_ms: float | None
) -> Path:
    """Two panels: the percentile distribution, and p50/p99/max per second over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    ps, values = recorder.distribution()
    if ps:
        x = [1.0 / (1.0 - p / 100.0) if p < 100 else 1e5 for p in ps]
        left.plot(x, values, marker="o")
        left.set_yscale("log")
        left.set_xscale("log")
        left.set_xticks(x)
        left.set_xticklabels([f"{p:g}" if p < 100 else "max" for p in ps], rotation=45)
    left.set_xlabel("percentile")
    left.set_ylabel("latency (ms)")
    left.set_title("latency by percentile")
    rows = recorder.over_time()
    if rows:
        t = [r["t_s"] for r in rows]
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
            right.plot(t, [r[key] for r in rows], label=label)
        right.set_yscale("log")
        right.legend()
    if target_ms is not None:
        for ax in (left, right):
            ax.axhline(target_ms, color="red", linestyle="--", linewidth=0.8)
    right.set_xlabel("seconds since start of load")
    right.set_ylabel("latency (ms)")
    right.set_title("latency over time (per second)")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
