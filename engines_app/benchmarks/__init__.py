"""Benchmarks: each module has ``run(**options) -> list[dict]`` rows with a baseline."""
