# Brio tasks. `just` comes with the dev extra: pip install -e '.[dev]'.

venv := ".venv/bin"

# list recipes
default:
    @just --list

# set up the virtualenv with everything for development and tests
setup:
    test -x {{venv}}/python || python3 -m venv .venv
    {{venv}}/pip install -q -e '.[dev]'

# run a single node on embedded SQLite (127.0.0.1:8080, data in ./brio-data)
serve *ARGS:
    {{venv}}/brio serve {{ARGS}}

# run the test suite (PostgreSQL tests start their own server from initdb/pg_ctl on PATH)
test *ARGS:
    {{venv}}/python -m pytest {{ARGS}}

# ruff and mypy (strict on brio/core)
lint:
    {{venv}}/ruff check .
    {{venv}}/ruff format --check .
    {{venv}}/mypy

# format the code
fmt:
    {{venv}}/ruff format .
    {{venv}}/ruff check --fix .

# regenerate the protobuf code in brio/_pb from proto/ (committed; CI checks it is current)
proto:
    {{venv}}/python proto/generate.py

# what CI runs: lint, every test, then the benchmark suite's smoke run (proves the harness)
ci: lint test-parallel bench-smoke

# the whole suite: all but tests/system on both cores (pytest-xdist), then tests/system in order
test-parallel *ARGS:
    {{venv}}/python -m pytest -n 2 --ignore=tests/system {{ARGS}}
    {{venv}}/python -m pytest tests/system {{ARGS}}

# the simulator's long run: 10,000 seeds of mixed faults, every safety measure on (docs/simulator.md)
chaos *ARGS:
    {{venv}}/python -m sim --seeds 10000 --progress {{ARGS}}

# the cluster benchmark on PostgreSQL, a table plus JSON (docs/benchmarks.md); --quick: a smoke run
bench-cluster *ARGS:
    {{venv}}/python -m bench.cluster {{ARGS}}

# the benchmark suite (issue 12): every row, Brio beside its baseline in the same run, a table
# plus JSON (docs/benchmarks.md); needs pip install -e '.[bench]' and redis-server; --rows a,b
bench *ARGS:
    {{venv}}/python -m bench.suite {{ARGS}}

# the suite at tiny sizes, Brio rows and the bare-app baseline only (no Celery, Ray or
# PostgreSQL): seconds, run by CI to prove the harness works, its figures mean nothing
bench-smoke *ARGS:
    {{venv}}/python -m bench.suite --smoke {{ARGS}}

# mutation testing of the lease core, not in CI (docs/simulator.md): pip install -e '.[mutate]'
mutate *ARGS:
    #!/usr/bin/env bash
    set -euo pipefail
    # In a scratch copy (mutmut writes mutants/ where it runs), niced, 2 processes, an hour.
    work="${TMPDIR:-/tmp}/brio-mutate"
    rm -rf "$work" && mkdir -p "$work"
    cp -r brio sim tests pyproject.toml "$work"/
    find "$work" -name __pycache__ -prune -exec rm -rf {} +
    cd "$work"
    export PATH="{{justfile_directory()}}/.venv/bin:$PATH"
    set -- {{ARGS}}
    # Lease's methods, not LeaseSettings' checks: x?Lease?[!e]* leaves out xǁLeaseSettingsǁ
    [ $# -gt 0 ] || set -- 'brio.core.lease.x?Lease?[!e]*'
    nice -n 10 timeout 3600 mutmut run --max-children 2 "$@" || echo "mutmut: exit $?"
    mutmut results
    echo "mutants and their diffs: cd $work && mutmut show NAME"
