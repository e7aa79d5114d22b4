"""``[mesh.lease]``: its keys, the line each mistake gets, and the voter and candidate sets."""

from __future__ import annotations

import pytest

from brio.config.model import MeshConfig

from .conftest import Loader, ProblemsOf


def only(problems: list[str]) -> str:
    assert len(problems) == 1, problems
    return problems[0]


def after_source(line: str, source: str = "brio.toml") -> str:
    """The line without the file path in front (tmp_path differs per test)."""
    prefix = f"{source}: "
    assert prefix in line, line
    return line.split(prefix, 1)[1]


def test_defaults(load_toml: Loader) -> None:
    lease = load_toml(None).config.mesh.lease
    # issue 12 target 4: kill -9 to a new primary that placed a task in about 1.25 s
    # (docs/lease.md, Failover time)
    assert lease.lease_duration == 1.2
    assert lease.election_timeout == (0.1, 0.3)
    assert lease.max_clock_drift == 0.05
    assert lease.voters is None


def test_every_key_from_the_file(load_toml: Loader) -> None:
    lease = load_toml(
        """\
[mesh.lease]
lease_duration = 3
election_timeout = [0.5, 0.5]
max_clock_drift = 0
voters = ["c1", "c2", "w1"]
"""
    ).config.mesh.lease
    assert lease.lease_duration == 3.0
    assert lease.election_timeout == (0.5, 0.5)  # min == max: no spread, still valid
    assert lease.max_clock_drift == 0.0
    assert lease.voters == ["c1", "c2", "w1"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "lease_duration = 0.1",
            "[mesh.lease] lease_duration: got 0.1; expected at least 0.3 seconds: the primary "
            "renews every third of the lease, and a shorter one runs out on ordinary network "
            "delays",
        ),
        (
            "lease_duration = 0",
            "[mesh.lease] lease_duration: got 0; expected a number greater than 0",
        ),
        (
            "lease_duration = -5",
            "[mesh.lease] lease_duration: got -5; expected a number greater than 0",
        ),
        (
            "election_timeout = [2.5, 1.0]",
            "[mesh.lease] election_timeout: got [2.5, 1.0]; min 2.5 is above max 1; "
            "expected [min, max] in seconds with 0 < min <= max",
        ),
        (
            "election_timeout = [0, 1.0]",
            "[mesh.lease] election_timeout: got [0, 1.0]; min 0 is not above 0; "
            "expected [min, max] in seconds with 0 < min <= max",
        ),
        (
            "election_timeout = [-1, -0.5]",
            "[mesh.lease] election_timeout: got [-1, -0.5]; min -1 is not above 0; "
            "expected [min, max] in seconds with 0 < min <= max",
        ),
        (
            "election_timeout = [1, inf]",
            "[mesh.lease] election_timeout: got [1, inf]; "
            "expected [min, max] in seconds with 0 < min <= max, both finite",
        ),
        (
            "election_timeout = [1, 2, 3]",
            "[mesh.lease] election_timeout: got [1, 2, 3]; "
            "expected [min, max] in seconds, e.g. [1.0, 2.5]: two numbers, not 3",
        ),
        (
            "election_timeout = [1]",
            "[mesh.lease] election_timeout: got [1]; "
            "expected [min, max] in seconds, e.g. [1.0, 2.5]: two numbers, not 1",
        ),
        (
            "election_timeout = 2",
            "[mesh.lease] election_timeout: got 2; expected [min, max] in seconds, e.g. [1.0, 2.5]",
        ),
        (
            "election_timeout = [true, 2]",
            "[mesh.lease] election_timeout: got [True, 2]; "
            "expected [min, max] in seconds, e.g. [1.0, 2.5]: numbers, not true or false",
        ),
        (
            'election_timeout = ["soon", 2]',
            "[mesh.lease] election_timeout (item 1): got 'soon'; expected a number",
        ),
        (
            "max_clock_drift = 0.5",
            "[mesh.lease] max_clock_drift: got 0.5; expected a number less than 0.5",
        ),
        (
            "max_clock_drift = -0.01",
            "[mesh.lease] max_clock_drift: got -0.01; expected a number at least 0",
        ),
        (
            "voters = []",
            "[mesh.lease] voters: got []; expected at least one node id; leave voters out to "
            "use this node and every [[mesh.peers]] id",
        ),
        (
            'voters = ["c1", "c2", "c1"]',
            "[mesh.lease] voters: got ['c1', 'c2', 'c1']; "
            "each node id may be listed once; repeated: c1",
        ),
        (
            'voters = ["c1", ""]',
            "[mesh.lease] voters: got ['c1', '']; voter 2 is empty; expected a node id",
        ),
        (
            'voters = ["c1", 2]',
            "[mesh.lease] voters (item 2): got 2; expected a string (in quotes)",
        ),
        (
            "voter = ['c1']",
            "[mesh.lease] voter: got ['c1']; unknown key (did you mean 'voters'?); known keys "
            "are: lease_duration, election_timeout, max_clock_drift, voters, max_term_jump, "
            "witness",
        ),
    ],
)
def test_each_mistake_names_the_key(text: str, expected: str, problems_of: ProblemsOf) -> None:
    assert after_source(only(problems_of(f"[mesh.lease]\n{text}\n"))) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1.5,3", (1.5, 3.0)), (" 0.5 , 0.75 ", (0.5, 0.75)), ("[2, 4.5]", (2.0, 4.5))],
)
def test_election_timeout_from_the_environment(
    value: str, expected: tuple[float, float], load_toml: Loader
) -> None:
    loaded = load_toml(None, {"BRIO_MESH__LEASE__ELECTION_TIMEOUT": value})
    assert loaded.config.mesh.lease.election_timeout == expected
    assert loaded.env_overrides == ["BRIO_MESH__LEASE__ELECTION_TIMEOUT"]


def test_bad_election_timeout_in_the_environment_names_the_variable(
    problems_of: ProblemsOf,
) -> None:
    line = only(problems_of(None, {"BRIO_MESH__LEASE__ELECTION_TIMEOUT": "3,1"}))
    assert line == (
        "BRIO_MESH__LEASE__ELECTION_TIMEOUT: [mesh.lease] election_timeout: got ['3', '1']; "
        "min 3 is above max 1; expected [min, max] in seconds with 0 < min <= max"
    )


def test_election_timeout_is_set_whole_not_item_by_item(problems_of: ProblemsOf) -> None:
    line = only(problems_of(None, {"BRIO_MESH__LEASE__ELECTION_TIMEOUT__0": "3"}))
    assert line == (
        "BRIO_MESH__LEASE__ELECTION_TIMEOUT__0: [mesh.lease] election_timeout is a list and "
        "cannot be set item by item; set all of it as JSON in BRIO_MESH__LEASE__ELECTION_TIMEOUT"
    )


def test_voters_and_timing_from_the_environment(load_toml: Loader) -> None:
    env = {
        "BRIO_MESH__LEASE__VOTERS": "c1, c2,w1",
        "BRIO_MESH__LEASE__LEASE_DURATION": "2.5",
        "BRIO_MESH__LEASE__MAX_CLOCK_DRIFT": "0.1",
    }
    lease = load_toml("[mesh.lease]\nvoters = ['x']\n", env).config.mesh.lease
    assert lease.voters == ["c1", "c2", "w1"]  # the variable replaces the file's list
    assert lease.lease_duration == 2.5
    assert lease.max_clock_drift == 0.1


def test_empty_voters_variable_is_refused(problems_of: ProblemsOf) -> None:
    line = only(problems_of(None, {"BRIO_MESH__LEASE__VOTERS": ""}))
    assert line.startswith("BRIO_MESH__LEASE__VOTERS: [mesh.lease] voters: got []; ")


# the voter and candidate sets

THREE_COORDINATORS = """\
[mesh]
node_id = "c1"
role = "coordinator"

[[mesh.peers]]
id = "c2"
address = "10.0.1.2:50051"
role = "coordinator"

[[mesh.peers]]
id = "c3"
address = "10.0.1.3:50051"
role = "coordinator"

[[mesh.peers]]
id = "w1"
address = "10.0.1.10:50051"

[[mesh.peers]]
address = "10.0.1.11:50051"
role = "coordinator"
"""


def test_default_voters_are_this_node_and_every_peer_with_an_id(load_toml: Loader) -> None:
    mesh = load_toml(THREE_COORDINATORS).config.mesh
    # The last peer names no id: it cannot be counted until it answers, so it is left out.
    assert mesh.lease_voters() == frozenset({"c1", "c2", "c3", "w1"})
    assert mesh.lease_candidates() == frozenset({"c1", "c2", "c3"})


def test_explicit_voters_replace_the_default(load_toml: Loader) -> None:
    text = THREE_COORDINATORS + '\n[mesh.lease]\nvoters = ["c1", "c2", "w1"]\n'
    mesh = load_toml(text).config.mesh
    assert mesh.lease_voters() == frozenset({"c1", "c2", "w1"})
    assert mesh.lease_candidates() == frozenset({"c1", "c2", "c3"})  # c3: a standby


def test_a_worker_is_no_candidate_but_votes() -> None:
    mesh = MeshConfig(
        node_id="w1",
        role="worker",
        peers=[
            {"id": "c1", "address": "10.0.1.1:50051", "role": "coordinator"},
            {"id": "c2", "address": "10.0.1.2:50051", "role": "coordinator"},
        ],
    )
    assert mesh.lease_voters() == frozenset({"w1", "c1", "c2"})
    assert mesh.lease_candidates() == frozenset({"c1", "c2"})


def test_discovered_peers_do_not_change_the_voters(load_toml: Loader) -> None:
    text = """\
[mesh]
node_id = "c1"

[mesh.discovery]
method = "dns"
dns_name = "brio-mesh.internal"
"""
    mesh = load_toml(text).config.mesh
    assert mesh.lease_voters() == frozenset({"c1"})
    assert mesh.lease_candidates() == frozenset({"c1"})


def test_peers_from_the_environment_name_no_id(load_toml: Loader) -> None:
    env = {"BRIO_NODE_ID": "c1", "BRIO_MESH_PEERS": "10.0.1.2:50051,10.0.1.3:50051"}
    mesh = load_toml(None, env).config.mesh
    assert mesh.lease_voters() == frozenset({"c1"})


def test_voter_set_warnings_name_what_does_not_vote(load_toml: Loader) -> None:
    unnamed = load_toml(THREE_COORDINATORS).config.mesh.lease_voters_warning()
    assert unnamed is not None and "have no id" in unnamed and "[mesh.lease] voters" in unnamed
    named = THREE_COORDINATORS + '\n[mesh.lease]\nvoters = ["c1", "c2", "w1"]\n'
    assert load_toml(named).config.mesh.lease_voters_warning() is None
    dns = '[mesh]\nnode_id = "c1"\n\n[mesh.discovery]\nmethod = "dns"\ndns_name = "x.internal"\n'
    warning = load_toml(dns).config.mesh.lease_voters_warning()
    assert warning is not None and "dns discovery do not vote" in warning
    assert load_toml('[mesh]\nnode_id = "c1"\n').config.mesh.lease_voters_warning() is None
