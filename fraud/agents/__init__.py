"""Faust wiring: the app, its topics and tables, and thin agents that call the pure core."""
