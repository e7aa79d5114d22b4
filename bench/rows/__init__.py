"""The rows of the benchmark suite (``bench/suite.py``), one module each."""
