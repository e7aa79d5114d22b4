"""``[mesh] cluster_secret`` and ``insecure``: a multi-node mesh is authenticated, or says loudly
that it is not (issue 11 item 1)."""

from __future__ import annotations

from brio.config.redact import redacted
from brio.core.constants import MAX_TERM

from .conftest import Loader, ProblemsOf

PEERS = (
    '[database]\nurl = "postgresql://brio@db/brio"\n'
    '[[mesh.peers]]\nid = "c2"\naddress = "10.0.1.2:50051"\nrole = "coordinator"\n'
)


def test_a_plaintext_mesh_with_peers_needs_a_secret_or_insecure(problems_of: ProblemsOf) -> None:
    (line,) = problems_of("[mesh]\nenabled = true\n" + PEERS)
    assert "[mesh] cluster_secret: a multi-node mesh without TLS needs a shared secret" in line
    for key in ("BRIO_MESH_CLUSTER_SECRET", "[mesh.tls]", "[mesh] insecure = true"):
        assert key in line


def test_discovery_counts_as_multi_node(problems_of: ProblemsOf) -> None:
    text = '[mesh]\nenabled = true\n[mesh.discovery]\nmethod = "kubernetes"\n'
    text += '[database]\nurl = "postgresql://brio@db/brio"\n'
    (line,) = problems_of(text)
    assert "cluster_secret" in line


def test_a_secret_tls_or_insecure_is_enough(load_toml: Loader) -> None:
    secret = load_toml('[mesh]\nenabled = true\ncluster_secret = "s3cret-s3cret"\n' + PEERS)
    assert secret.config.mesh.authenticated
    assert secret.config.mesh.insecure_warning() is None
    insecure = load_toml("[mesh]\nenabled = true\ninsecure = true\n" + PEERS).config.mesh
    assert not insecure.authenticated
    warning = insecure.insecure_warning()
    assert warning is not None and warning.startswith("INSECURE MESH")
    assert "cluster_secret" in warning
    one = load_toml("[mesh]\nenabled = true\n").config.mesh  # no peers: nobody to trust
    assert one.insecure_warning() is None


def test_the_secret_from_the_environment_is_redacted(load_toml: Loader) -> None:
    env = {"BRIO_MESH_CLUSTER_SECRET": "from-the-env-SECRET"}
    loaded = load_toml("[mesh]\nenabled = true\n" + PEERS, env)
    secret = loaded.config.mesh.cluster_secret
    assert secret is not None and secret.get_secret_value() == "from-the-env-SECRET"
    assert loaded.env_overrides == ["BRIO_MESH_CLUSTER_SECRET"]
    assert redacted(loaded.config)["mesh"]["cluster_secret"] == "***"


def test_a_blank_secret_is_refused_without_showing_it(problems_of: ProblemsOf) -> None:
    (line,) = problems_of('[mesh]\ncluster_secret = "   "\n')
    assert line.endswith("[mesh] cluster_secret: must not be blank")


def test_max_term_jump_is_bounded(problems_of: ProblemsOf, load_toml: Loader) -> None:
    assert load_toml("").config.mesh.lease.max_term_jump == 100_000
    (line,) = problems_of("[mesh.lease]\nmax_term_jump = 0\n")
    assert "[mesh.lease] max_term_jump" in line
    (line,) = problems_of(f"[mesh.lease]\nmax_term_jump = {MAX_TERM + 1}\n")
    assert "max_term_jump" in line
