"""Per-deployment runtime state, kept in memory and changed only synchronously.

So far: in-flight count (for ``max_parallel_requests``), request and failure
counters, the last error, and when the deployment last served a request. The
reliability work grows this into the health state machine (cooldowns, latency
windows); the keys are deployment ids, a fixed set from the configuration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from router.domain import Deployment


@dataclass(slots=True)
class DeploymentState:
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None

    def has_capacity(self, deployment: Deployment) -> bool:
        limit = deployment.max_parallel_requests
        return limit is None or self.in_flight < limit

    def started(self) -> None:
        self.in_flight += 1
        self.requests += 1

    def finished(self, error: str | None, abandoned: bool = False) -> None:
        """One request ended: ``error`` None is a success; ``abandoned`` (the client
        went away) counts neither way."""
        self.in_flight -= 1
        if abandoned:
            return
        now = time.time()
        if error is None:
            self.last_success_at = now
        else:
            self.failures += 1
            self.last_error, self.last_error_at = error, now

    def snapshot(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_success_at": self.last_success_at,
        }


class StateTable:
    def __init__(self) -> None:
        self._states: dict[str, DeploymentState] = {}

    def __getitem__(self, deployment_id: str) -> DeploymentState:
        state = self._states.get(deployment_id)
        if state is None:
            state = self._states[deployment_id] = DeploymentState()
        return state
