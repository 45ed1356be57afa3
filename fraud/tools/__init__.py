"""Demo, simulator, training, evaluation, tail, local receivers, benchmarks."""
