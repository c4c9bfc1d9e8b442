"""Run a real ``cortex serve`` as a child process, for integration tests and the demo."""

from __future__ import annotations

from cortex_core.testing import ServiceProcess, free_port

__all__ = ["GatewayProcess", "free_port"]


class GatewayProcess(ServiceProcess):
    """A gateway daemon process."""

    module = "cortex_gateway"
