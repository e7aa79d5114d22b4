"""Brio: a service mesh for AI agents, built on trio's structured concurrency."""

__version__ = "0.1.0"
