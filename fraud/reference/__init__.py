"""Slow, obviously-correct pure Python twins of the numba kernels, for tests and debugging."""
