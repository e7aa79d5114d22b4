"""``ClusterAuth``: the HMAC-SHA256 of a mesh request with ``[mesh] cluster_secret``."""

from __future__ import annotations

from brio.mesh.transport import ClusterAuth

PATH = "/brio.mesh.v1.Mesh/Renew"
NOW = 1_700_000_000.0


def test_a_signature_is_accepted_once() -> None:
    auth = ClusterAuth("s3cret")
    header = auth.sign(PATH, "c1", b"body", NOW)
    assert auth.verify(PATH, "c1", b"body", header, NOW + 1) is None
    assert "replay" in (auth.verify(PATH, "c1", b"body", header, NOW + 2) or "")


def test_a_signature_covers_path_node_body_and_secret() -> None:
    header = ClusterAuth("s3cret").sign(PATH, "c1", b"body", NOW)
    for path, node, body, secret in (
        ("/brio.mesh.v1.Mesh/Vote", "c1", b"body", "s3cret"),
        (PATH, "c2", b"body", "s3cret"),
        (PATH, "c1", b"bodz", "s3cret"),
        (PATH, "c1", b"body", "other"),
    ):
        problem = ClusterAuth(secret).verify(path, node, body, header, NOW)
        assert problem is not None and "does not match" in problem


def test_old_or_missing_or_malformed_signatures() -> None:
    auth = ClusterAuth("s3cret")
    old = auth.sign(PATH, "c1", b"", NOW - 31)
    assert "from this node's clock" in (auth.verify(PATH, "c1", b"", old, NOW) or "")
    assert "not signed" in (auth.verify(PATH, "c1", b"", None, NOW) or "")
    for bad in ("v1", "v2 1 00", "v1 x 00", "v1 1700000000000 zz"):
        assert "malformed" in (auth.verify(PATH, "c1", b"", bad, NOW) or ""), bad


def test_seen_signatures_are_forgotten_after_the_window() -> None:
    auth = ClusterAuth("s3cret")
    for i in range(100):
        auth.verify(PATH, "c1", b"%d" % i, auth.sign(PATH, "c1", b"%d" % i, NOW), NOW)
    assert len(auth._seen) == 100
    auth.verify(PATH, "c1", b"x", auth.sign(PATH, "c1", b"x", NOW + 61), NOW + 61)
    assert len(auth._seen) == 1
