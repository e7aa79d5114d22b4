"""The deterministic simulator, ``python -m sim`` (docs/simulator.md).

It drives the real sans-io cores (``brio.core.lease.Lease``, ``brio.core.membership``,
``brio.core.fence``) over virtual time, a faulty network and drifting clocks, and checks the
safety invariants after every event. The pieces, one concept each:

- ``config``: what a run is made of; ``faults``: a seed's fault schedule; ``chaos``: doing it.
- ``loop``: events in true time; ``clock``: each node's local time; ``network``: latency and
  faults per link; ``rpc``: unary calls over it; ``wire``: what travels besides lease messages.
- ``node``: the driver around one node's cores; ``store``: the fenced database.
- ``world``: one seed, all of the above; ``invariants``: the judge; ``stats``: what it measured.
- ``trace``, ``report``, ``progress``, ``cli``: what a person sees.
"""
