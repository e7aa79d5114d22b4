"""The baselines the benchmark suite measures Brio beside (``bench/suite.py``)."""
