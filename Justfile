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

# what CI runs: lint, then every test
ci: lint test

# the simulator's long run: 10,000 seeds of mixed faults, every safety measure on (docs/simulator.md)
chaos *ARGS:
    {{venv}}/python -m sim --seeds 10000 --progress {{ARGS}}

# the cluster benchmark on PostgreSQL, a table plus JSON (docs/benchmarks.md); --quick: a smoke run
bench-cluster *ARGS:
    {{venv}}/python -m bench.cluster {{ARGS}}
