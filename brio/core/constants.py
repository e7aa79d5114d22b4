"""Constants the configuration shares with the lease cores, in a module that imports nothing.

``brio.config.model`` bounds ``[mesh.lease] max_term_jump`` by ``MAX_TERM`` and refuses node
ids that could be mistaken for ``WITNESS_ID``. Taking them from ``brio.core.lease`` and
``brio.core.witness`` loaded the lease's state machine (about 12 ms) on every start, a single
SQLite node's included, which never runs a lease. ``brio.core.lease.MAX_TERM`` and
``brio.core.witness.WITNESS_ID`` are imported from here.
"""

from __future__ import annotations

#: The largest lease term: the fence epoch is a signed 64-bit integer in the store.
MAX_TERM = 2**63 - 1
#: The store's voter id in the coordinator lease: a node id cannot start with "@"
#: (``brio.config.model``), so no node can be taken for it.
WITNESS_ID = "@store"
