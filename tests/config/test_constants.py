"""The configuration's lease constants come from ``brio.core.constants``, without the lease.

Reading the configuration (every ``brio`` command, every node's start) must not load the
lease's state machine for two numbers; the lease modules import them from there.
"""

from __future__ import annotations

import json
import subprocess
import sys

LEASE_MODULES = ("brio.core.lease", "brio.core.witness")


def test_reading_the_configuration_does_not_load_the_lease() -> None:
    probe = (
        "import json, sys\n"
        "import brio.config.model\n"
        f"print(json.dumps([m for m in {LEASE_MODULES!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout.splitlines()[-1]) == []
