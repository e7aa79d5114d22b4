"""``[mesh.access_control] coordinator_only_endpoints`` on a worker: a prefix covers the path
itself, everything under it and its Google-style custom methods (``prefix:verb``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from brio.api.routing import covered_by
from brio.core.tasks import TaskStatus
from tests.nodes import node_config, running_node


@pytest.mark.parametrize(
    ("prefix", "path", "covered"),
    [
        ("/api/tasks", "/api/tasks", True),
        ("/api/tasks", "/api/tasks/", True),
        ("/api/tasks", "/api/tasks/t1/cancel", True),
        ("/api/tasks", "/api/tasks:batch", True),
        ("/api/tasks/", "/api/tasks:batch", True),
        ("/api/tasks", "//api/tasks", True),
        ("/", "/health", True),
        ("/api/tasks", "/api/tasksx", False),
        ("/api/tasks", "/api/tasksx:batch", False),
        ("/api/tasks", "/api/sessions", False),
        ("/api/tasks", "/api", False),
        ("/api/tasks:batch", "/api/tasks", False),
        ("/api/tasks:batch", "/api/tasks:batch", True),
        # a verb only on the prefix's last segment: /api:x/tasks is not /api/tasks
        ("/api/tasks", "/api:x/tasks", False),
    ],
)
def test_a_prefix_covers_itself_what_is_under_it_and_its_custom_methods(
    prefix: str, path: str, covered: bool
) -> None:
    assert covered_by(prefix, path) is covered


def test_a_template_parameter_may_be_any_segment() -> None:
    assert covered_by("/api/tasks/t1", "/api/tasks/{task_id}", template=True)
    assert covered_by("/api/tasks/t1", "/api/tasks/{task_id}/cancel", template=True)
    # a literal brace in a request path is just a character
    assert not covered_by("/api/tasks/t1", "/api/tasks/{task_id}")


async def test_a_worker_refuses_custom_methods_under_a_prefix(tmp_path: Path) -> None:
    access = {"coordinator_only_endpoints": ["/api/tasks"]}
    config = node_config(tmp_path, mesh={"role": "worker", "access_control": access})
    async with running_node(config) as node:
        body = {"tasks": [{"agent": "echo", "prompt": "x"}]}
        refused = await node.client.post("/api/tasks:batch", json=body)
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "coordinator_only"
        assert "/api/tasks:batch" in error["message"]
        for path in ["/api/tasks", "/api/tasks/some-id"]:
            assert (await node.client.get(path)).status_code == 403, path
        assert (await node.client.get("/api/agents")).status_code == 200
        # nothing was submitted by the refused batch
        assert node.handle.store is not None
        assert await node.handle.store.count_tasks(TaskStatus.QUEUED) == 0
        # the document says so on the batch route
        doc = (await node.client.get("/openapi.json")).json()
        batch = doc["paths"]["/api/tasks:batch"]["post"]["responses"]["403"]["description"]
        assert "coordinator_only_endpoints" in batch
        agents = doc["paths"]["/api/agents"]["get"]["responses"]
        assert "403" not in agents
