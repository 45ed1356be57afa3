"""fraud: stream-processing fraud detection engine."""

__version__ = "0.1.0"
