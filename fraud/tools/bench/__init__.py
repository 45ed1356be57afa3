"""Benchmarks behind `fraud bench`: latency, throughput and the limits they are compared to."""
