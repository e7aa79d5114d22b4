"""The mesh's protobuf messages and services, generated from ``proto/brio/mesh/v1/mesh.proto``.

The generated package (``brio/_pb``, made by ``just proto``) keeps the compiler's layout;
this module is the one short name the rest of the code imports it by.
"""

from brio._pb.brio.mesh.v1 import (
    ActionResponse,
    AgentInfo,
    Edge,
    HeartbeatRequest,
    HeartbeatResponse,
    Load,
    MeshAdminStub,
    MeshError,
    MeshErrorCode,
    MeshRequest,
    MeshResponse,
    MeshStub,
    NodeInfo,
    NodeRequest,
    PeerStatus,
    PingRequest,
    PingResponse,
    StatsRequest,
    StatsResponse,
    StatusRequest,
    StatusResponse,
    TopologyRequest,
    TopologyResponse,
)

__all__ = [
    "ActionResponse",
    "AgentInfo",
    "Edge",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "Load",
    "MeshAdminStub",
    "MeshError",
    "MeshErrorCode",
    "MeshRequest",
    "MeshResponse",
    "MeshStub",
    "NodeInfo",
    "NodeRequest",
    "PeerStatus",
    "PingRequest",
    "PingResponse",
    "StatsRequest",
    "StatsResponse",
    "StatusRequest",
    "StatusResponse",
    "TopologyRequest",
    "TopologyResponse",
]
