"""The mesh's protobuf messages and services, generated from ``proto/brio/mesh/v1/mesh.proto``.

The generated package (``brio/_pb``, made by ``just proto``) keeps the compiler's layout;
this module is the one short name the rest of the code imports it by. It re-exports the
generated ``__all__``, so a message added to the proto needs no edit here.
"""

from brio._pb.brio.mesh.v1 import *  # noqa: F403
from brio._pb.brio.mesh.v1 import __all__  # noqa: F401 (what this module exports)
