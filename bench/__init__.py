"""Benchmarks: they print figures and assert nothing (docs/benchmarks.md)."""
