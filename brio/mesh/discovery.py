"""Peer discovery: which addresses the mesh should dial, from config, DNS or Kubernetes.

Each method produces the *whole* current set of peers, again and again, and hands it to a
callback; the node diffs successive sets (new addresses are dialled, vanished ones dropped).
The static ``[[mesh.peers]]`` seeds are part of every set, whatever the method, so operators
may combine fixed seeds with discovery. A lookup that fails is logged once per outage and the
previous set stays in force: an error never empties the mesh.

DNS is dnspython's async resolver on its trio backend and Kubernetes one ``GET .../pods`` with
httpx: both run on trio natively, so a trio cancel scope (a lookup's deadline, shutdown) stops
a lookup at once, sockets closed, with no thread left behind. Neither needs asyncio.

The refresh loop is a fixed-interval poll, not a retry loop: a failed lookup is simply
followed by the next refresh, so there is no backoff to hand to a retry library.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
import httpx
import trio

from brio.config.model import MeshConfig, split_host_port

__all__ = [
    "DEFAULT_LOOKUP_TIMEOUT",
    "DiscoveryError",
    "FoundPeer",
    "format_address",
    "list_k8s_pods",
    "resolve_dns",
    "run_discovery",
    "static_peers",
]

log = logging.getLogger(__name__)

#: How long one DNS lookup or Kubernetes API call may take before the refresh counts as failed.
DEFAULT_LOOKUP_TIMEOUT = 10.0

#: The container port name that marks the mesh port in a pod spec (``ports: - name: mesh``).
MESH_PORT_NAME = "mesh"

_DISCOVERY = "[mesh.discovery]"


@dataclass(frozen=True)
class FoundPeer:
    """One peer address that discovery knows of."""

    address: str  # "host:port" ("[v6]:port" for IPv6): what the mesh dials
    node_id: str | None = None  # when the source knows it (static id, pod name)
    role: str | None = None  # only static config knows a role


class DiscoveryError(Exception):
    """A discovery source could not be asked; the message names the key or source at fault."""


def format_address(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


# --- static ------------------------------------------------------------------------------


def static_peers(config: MeshConfig) -> frozenset[FoundPeer]:
    """The ``[[mesh.peers]]`` seeds (``BRIO_MESH_PEERS`` ends up there too).

    A peer's role is reported only when it was written down: ``BRIO_MESH_PEERS`` gives bare
    addresses, and the model's default ("worker") would be a guess; the first heartbeat says.
    """
    return frozenset(
        FoundPeer(
            address=peer.address,
            node_id=peer.id,
            role=peer.role if "role" in peer.model_fields_set else None,
        )
        for peer in config.peers
    )


def _merge(static: frozenset[FoundPeer], found: frozenset[FoundPeer]) -> frozenset[FoundPeer]:
    """Seeds plus discovered peers, one entry per address (what config says wins)."""
    by_address = {peer.address: peer for peer in found}
    for seed in static:
        other = by_address.get(seed.address)
        if other is None:
            by_address[seed.address] = seed
        else:
            by_address[seed.address] = FoundPeer(
                seed.address, seed.node_id or other.node_id, seed.role or other.role
            )
    return frozenset(by_address.values())


# --- the refresh loop --------------------------------------------------------------------


async def run_discovery(
    config: MeshConfig,
    found: Callable[[frozenset[FoundPeer]], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    env: Mapping[str, str] | None = None,
    lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
) -> None:
    """Report the current peer set to ``found`` now and after every ``refresh_interval``.

    ``static``: one report, then sleep forever. ``dns``/``kubernetes``: look up, report,
    repeat. ``task_status.started()`` comes after the first attempt, successful or not (a
    failed first attempt still reports the static seeds, if there are any). An incomplete
    configuration (no ``dns_name``, no namespace...) raises ``DiscoveryError`` before that:
    it will not heal by waiting. ``lookup_timeout`` bounds each lookup.
    """
    discovery = config.discovery
    seeds = static_peers(config)
    if discovery.method == "static":
        found(seeds)
        task_status.started()
        await trio.sleep_forever()

    lookup: Callable[[], Awaitable[frozenset[FoundPeer]]]
    if discovery.method == "dns":
        lookup, source = _dns_lookup(config, lookup_timeout)
    else:
        lookup, source = _k8s_lookup(config, os.environ if env is None else env, lookup_timeout)

    started = False
    failures = 0
    while True:
        try:
            current = await lookup()
        except DiscoveryError as exc:
            if failures == 0:
                log.warning(
                    "peer discovery via %s failed, keeping the previous peers "
                    "(retrying every %gs): %s",
                    source,
                    discovery.refresh_interval,
                    exc,
                )
                if not started and seeds:
                    found(seeds)
            failures += 1
        else:
            if failures:
                log.info(
                    "peer discovery via %s works again after %d failed attempt(s)",
                    source,
                    failures,
                )
            failures = 0
            found(_merge(seeds, current))
        if not started:
            started = True
            task_status.started()
        await trio.sleep(discovery.refresh_interval)


# --- DNS ---------------------------------------------------------------------------------


def _dns_lookup(
    config: MeshConfig, timeout: float
) -> tuple[Callable[[], Awaitable[frozenset[FoundPeer]]], str]:
    discovery = config.discovery
    name = discovery.dns_name
    if not name:
        raise DiscoveryError(
            f"{_DISCOVERY} method = 'dns' needs dns_name (the DNS name whose A/AAAA or SRV "
            "records list the peers)"
        )
    servers = list(discovery.dns_servers)

    async def lookup() -> frozenset[FoundPeer]:
        return await resolve_dns(name, discovery.port, servers, timeout)

    where = ", ".join(servers) if servers else "the system resolver"
    return lookup, f"DNS (dns_name {name!r} at {where})"


def _nameservers(servers: Iterable[str]) -> list[dns.nameserver.Nameserver]:
    """``"10.0.0.2"``, ``"127.0.0.1:5353"``, ``"[::1]:53"`` -> dnspython nameservers."""
    out: list[dns.nameserver.Nameserver] = []
    for item in servers:
        try:
            host, port = str(ipaddress.ip_address(item)), 53
        except ValueError:
            try:
                host, port = split_host_port(item)
                ipaddress.ip_address(host)
            except ValueError as err:
                raise DiscoveryError(
                    f"{_DISCOVERY} dns_servers: {item!r} is not an IP address with an "
                    f"optional port: {err}"
                ) from None
        out.append(dns.nameserver.Do53Nameserver(host, port))
    return out


# Named, not sniffed: discovery always runs under trio, and this fails loudly if not.
_TRIO = dns.asyncbackend.get_backend("trio")


class _DNS:
    """The lookups of one refresh; the caller's trio cancel scope is their one deadline."""

    def __init__(self, servers: list[str]) -> None:
        self.system = not servers
        try:
            # configure=True reads /etc/resolv.conf: a small local file, read synchronously
            self.resolver = dns.asyncresolver.Resolver(configure=self.system)
        except dns.exception.DNSException as exc:  # no /etc/resolv.conf
            raise DiscoveryError(
                f"no system DNS configuration ({exc}); set {_DISCOVERY} dns_servers"
            ) from None
        if servers:
            self.resolver.nameservers = _nameservers(servers)
        self.resolver.cache = None  # every refresh asks the server
        self.resolver.lifetime = math.inf  # the deadline is resolve_dns's cancel scope
        self.asking = ""  # the query in flight, for the timeout message

    async def records(self, name: str, rdtype: str, *, search: bool) -> list[Any]:
        """The answer's rdata; none for NXDOMAIN or no answer (both legitimate answers)."""
        self.asking = f"{name} {rdtype}"
        try:
            answer = await self.resolver.resolve(
                name, rdtype, raise_on_no_answer=False, search=search, backend=_TRIO
            )
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException as exc:  # SERVFAIL, REFUSED, unreachable...
            raise DiscoveryError(f"DNS lookup of {name} {rdtype} failed: {exc}") from None
        return list(answer)

    async def addresses(self, name: str, port: int, *, search: bool) -> set[FoundPeer]:
        peers: set[FoundPeer] = set()
        for rdtype in ("A", "AAAA"):
            for rdata in await self.records(name, rdtype, search=search):
                peers.add(FoundPeer(format_address(rdata.address, port)))
        return peers

    async def srv(self, name: str) -> set[FoundPeer]:
        peers: set[FoundPeer] = set()
        for rdata in await self.records(name, "SRV", search=self.system):
            target: dns.name.Name = rdata.target
            if target == dns.name.root:  # "." means: no such service here
                continue
            peers |= await self.addresses(target.to_text(), int(rdata.port), search=False)
        return peers

    def servers(self) -> str:
        return ", ".join(str(server) for server in self.resolver.nameservers) or "no servers"


async def resolve_dns(
    name: str,
    port: int,
    servers: list[str],
    timeout: float,
) -> frozenset[FoundPeer]:
    """The peers that ``name`` lists: SRV records for ``_service._proto`` names, else A/AAAA.

    With SRV each target's addresses are paired with the record's port; otherwise every
    address is paired with ``port``. A name with no records (or none at all) is an empty set;
    a timeout or a server failure raises ``DiscoveryError``. ``servers`` empty means the
    system's resolver configuration (including its search domains, as getaddrinfo would).
    ``timeout`` bounds all the queries of the lookup together, on trio's clock.
    """
    dns_ = _DNS(servers)
    with trio.move_on_after(timeout):
        if name.startswith("_"):
            return frozenset(await dns_.srv(name))
        return frozenset(await dns_.addresses(name, port, search=dns_.system))
    raise DiscoveryError(
        f"no DNS answer for {dns_.asking} within {timeout:g}s (asked {dns_.servers()})"
    )


# --- Kubernetes --------------------------------------------------------------------------


@dataclass(frozen=True)
class _K8sTarget:
    api_url: str
    namespace: str
    label_selector: str
    token_file: Path
    token_required: bool
    ca_file: Path | None


def _k8s_target(config: MeshConfig, env: Mapping[str, str]) -> _K8sTarget:
    """Where and how to ask, from config and the pod's service account; or what is missing."""
    discovery = config.discovery
    in_cluster = discovery.k8s_api_url is None
    if in_cluster:
        host = env.get("KUBERNETES_SERVICE_HOST", "").strip()
        port = env.get("KUBERNETES_SERVICE_PORT", "").strip()
        if not host or not port:
            raise DiscoveryError(
                f"{_DISCOVERY} k8s_api_url is not set and KUBERNETES_SERVICE_HOST/"
                "KUBERNETES_SERVICE_PORT are not in the environment (is this a pod?); "
                "set k8s_api_url, e.g. 'https://kubernetes.default.svc'"
            )
        if not port.isdigit():
            raise DiscoveryError(f"KUBERNETES_SERVICE_PORT={port!r} is not a port number")
        api_url = f"https://{format_address(host, int(port))}"
    else:
        api_url = str(discovery.k8s_api_url).rstrip("/")

    label_selector = (discovery.k8s_label_selector or "").strip()
    if not label_selector:
        raise DiscoveryError(
            f"{_DISCOVERY} method = 'kubernetes' needs k8s_label_selector (or "
            "BRIO_MESH_K8S_LABEL_SELECTOR), e.g. 'app=brio-kernel': without it every pod in "
            "the namespace would be dialled"
        )

    token_file = discovery.k8s_token_file
    if in_cluster and not token_file.is_file():
        raise DiscoveryError(
            f"{_DISCOVERY} k8s_token_file {str(token_file)!r} does not exist: mount the "
            "service account token (automountServiceAccountToken) or set k8s_token_file"
        )

    namespace = (discovery.k8s_namespace or "").strip()
    if not namespace:
        namespace_file = token_file.parent / "namespace"
        try:
            namespace = namespace_file.read_text().strip()
        except OSError as exc:
            raise DiscoveryError(
                f"{_DISCOVERY} k8s_namespace is not set (nor BRIO_MESH_K8S_NAMESPACE) and "
                f"{namespace_file} cannot be read ({exc.strerror or exc}); set k8s_namespace"
            ) from None
        if not namespace:
            raise DiscoveryError(
                f"{_DISCOVERY} k8s_namespace is not set and {namespace_file} is empty; "
                "set k8s_namespace"
            )

    ca_file = discovery.k8s_ca_file
    if not api_url.startswith("https://"):
        ca_file = None
    elif ca_file is not None and not ca_file.is_file():
        # The default path only exists inside a pod; outside, with an explicit API URL, the
        # system's trusted CAs apply unless the operator named a CA file.
        if in_cluster or "k8s_ca_file" in discovery.model_fields_set:
            raise DiscoveryError(
                f"{_DISCOVERY} k8s_ca_file {str(ca_file)!r} does not exist; set it to the "
                "cluster's CA certificate"
            )
        ca_file = None

    return _K8sTarget(
        api_url=api_url,
        namespace=namespace,
        label_selector=label_selector,
        token_file=token_file,
        token_required=in_cluster,
        ca_file=ca_file,
    )


def _k8s_lookup(
    config: MeshConfig, env: Mapping[str, str], timeout: float
) -> tuple[Callable[[], Awaitable[frozenset[FoundPeer]]], str]:
    target = _k8s_target(config, env)
    port = config.discovery.port

    async def lookup() -> frozenset[FoundPeer]:
        token = await _read_token(target)
        return await list_k8s_pods(
            target.api_url,
            target.namespace,
            target.label_selector,
            token,
            target.ca_file,
            port,
            timeout,
        )

    source = (
        f"Kubernetes (namespace {target.namespace!r}, pods {target.label_selector!r}, "
        f"API {target.api_url})"
    )
    return lookup, source


async def _read_token(target: _K8sTarget) -> str:
    """The bearer token, read afresh each time: the kubelet rotates it.

    With an explicit ``k8s_api_url`` a missing token file means "no token" (``kubectl
    proxy`` needs none); in a pod it is an error.
    """
    path = trio.Path(target.token_file)
    try:
        return (await path.read_text()).strip()
    except FileNotFoundError:
        if not target.token_required:
            return ""
        raise DiscoveryError(f"{_DISCOVERY} k8s_token_file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise DiscoveryError(
            f"{_DISCOVERY} k8s_token_file {str(path)!r} cannot be read: {exc.strerror or exc}"
        ) from None


def _tls_verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise DiscoveryError(
            f"{_DISCOVERY} k8s_ca_file {str(ca_file)!r} is not a readable PEM CA certificate: {exc}"
        ) from None


async def list_k8s_pods(  # noqa: PLR0917 (the positional API asked for)
    api_url: str,
    namespace: str,
    label_selector: str,
    token: str,
    ca_file: Path | None,
    port: int,
    timeout: float,
) -> frozenset[FoundPeer]:
    """The running, ready pods that match ``label_selector`` in ``namespace``, as peers.

    The address is the pod IP with the container port named ``mesh`` if a container declares
    one, else ``port``; ``node_id`` is the pod name. Pods that are pending, finished, being
    deleted, not ready or without an IP are left out. ``ca_file`` verifies the API server's
    certificate (``None``: the system's CAs); ``http://`` URLs use no TLS. An empty ``token``
    sends no ``Authorization`` header.
    """
    url = f"{api_url.rstrip('/')}/api/v1/namespaces/{namespace}/pods"
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    verify = _tls_verify(ca_file) if url.startswith("https://") else False
    where = f"Kubernetes API {url}"
    try:
        async with httpx.AsyncClient(verify=verify, timeout=timeout) as client:
            response = await client.get(
                url, params={"labelSelector": label_selector}, headers=headers
            )
    except httpx.ConnectError as exc:
        causes = _causes(exc)
        bad_cert = next((c for c in causes if isinstance(c, ssl.SSLCertVerificationError)), None)
        if bad_cert is not None:
            which = f"k8s_ca_file {str(ca_file)!r}" if ca_file else "the system's trusted CAs"
            reason = bad_cert.verify_message or bad_cert.reason or str(bad_cert)
            raise DiscoveryError(
                f"{where}: TLS verification failed against {which}: {reason}"
            ) from None
        detail = next((str(c) for c in reversed(causes) if str(c)), type(exc).__name__)
        raise DiscoveryError(f"{where}: cannot connect: {detail}") from None
    except httpx.TimeoutException:
        raise DiscoveryError(f"{where}: no answer within {timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise DiscoveryError(f"{where}: {type(exc).__name__}: {exc}") from None

    if response.status_code != 200:
        raise DiscoveryError(f"{where}: {_status_text(response, token)}")
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DiscoveryError(f"{where}: the answer is not JSON ({exc})") from None
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        kind = body.get("kind") if isinstance(body, dict) else type(body).__name__
        raise DiscoveryError(f"{where}: expected a PodList with 'items', got {kind!r}")
    return frozenset(peer for pod in items if (peer := _pod_peer(pod, port)) is not None)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what lies under it (causes, contexts, group members), outermost first.

    httpx on trio wraps the interesting error (``SSLCertVerificationError``, ``Connection
    refused``) in a message-less ``ConnectError`` over a ``BrokenResourceError`` or an
    ``ExceptionGroup`` of connection attempts.
    """
    out: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(out) < 50:
        current = todo.pop(0)
        if any(current is seen for seen in out):
            continue
        out.append(current)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        inner = current.__cause__ or current.__context__
        if inner is not None:
            todo.append(inner)
    return out


def _status_text(response: httpx.Response, token: str) -> str:
    """``HTTP 403 Forbidden: <the Status message>``, plus a hint for 401/403."""
    text = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    message = ""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        message = response.text.strip()[:200]
    else:
        if isinstance(body, dict):
            message = str(body.get("message") or "")
    if message:
        text += f": {message}"
    if response.status_code == 401:
        text += (
            " (check k8s_token_file)"
            if token
            else " (no token was sent: k8s_token_file does not exist)"
        )
    elif response.status_code == 403:
        text += (
            " (the service account needs get/list on pods in this namespace: a Role and a "
            "RoleBinding)"
        )
    return text


def _pod_peer(pod: Any, default_port: int) -> FoundPeer | None:
    if not isinstance(pod, dict):
        return None
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    if not (isinstance(metadata, dict) and isinstance(spec, dict) and isinstance(status, dict)):
        return None
    name = metadata.get("name")
    pod_ip = status.get("podIP")
    if not isinstance(name, str) or not isinstance(pod_ip, str) or not pod_ip:
        return None
    if metadata.get("deletionTimestamp") or status.get("phase") != "Running":
        return None
    conditions = status.get("conditions")
    if isinstance(conditions, list):
        ready = [c for c in conditions if isinstance(c, dict) and c.get("type") == "Ready"]
        if ready and ready[0].get("status") != "True":
            return None
    return FoundPeer(format_address(pod_ip, _mesh_port(spec, default_port)), node_id=name)


def _mesh_port(spec: dict[str, Any], default: int) -> int:
    containers = spec.get("containers")
    for container in containers if isinstance(containers, list) else ():
        ports = container.get("ports") if isinstance(container, dict) else None
        for entry in ports if isinstance(ports, list) else ():
            if not isinstance(entry, dict) or entry.get("name") != MESH_PORT_NAME:
                continue
            number = entry.get("containerPort")
            if isinstance(number, int) and 1 <= number <= 65535:
                return number
    return default
