"""Spill-over: when every local candidate of a request is saturated, go to a fallback
chain's next step now instead of queueing for a slot.

A chain step may carry ``spill_when`` (the policy file's ``fallback_chains``)::

    - secondary: claude
      preferred_model: claude
      spill_when: queue_wait_ms > 2000

It is a fallback step as any other (its ``condition``, ``always`` by default,
governs it after failures), and also a spill-over target: when the request
arrives and ``spill_when`` holds for the decision's own candidates, its
deployments are tried first. ``spill_when`` is one of

* ``saturated``: every candidate is at its ``max_parallel_requests`` (or its
  server's slot count): the point where the request would queue;
* ``queue_depth > N``: every candidate has more than N requests waiting: ours for
  a slot, plus what its server reports waiting (vLLM ``/metrics``);
* ``queue_wait_ms > N``: the shortest expected wait for a candidate to start the
  request passes N ms: requests ahead × the mean time a request holds its slot
  there ÷ its parallelism.
  A candidate with no latency sample yet has no expected wait (it does not spill).

Everything here is a pure function of ``Load`` figures (``load_of`` reads them off
the state table), so the priority work can add its own condition beside these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router.domain import Deployment
from router.routing.rules import Condition, compare

SUBJECTS = ("saturated", "queue_depth", "queue_wait_ms")


@dataclass(frozen=True, slots=True)
class Load:
    """How busy one candidate is for a request arriving now."""

    full: bool  # at its max_parallel_requests (or slot count): a request would queue
    queue: int  # requests waiting for it: ours for a slot, plus its server's own queue
    wait_ms: float | None  # expected wait before it starts a new request; None: unknown


def load_of(view: Any, d: Deployment) -> Load:
    """``d``'s ``Load`` from the state table (``router.state.StateTable``)."""
    s = view[d.id]
    cap = view.capacity(d)
    in_flight = view.in_flight(d)
    full = cap is not None and in_flight >= cap
    server = view.servers.get(d.api_base)
    backend_waiting = (server.waiting or 0) if server is not None else 0
    queue = s.waiters + backend_waiting
    ahead = queue + (in_flight - cap + 1 if full and cap is not None else 0)
    if ahead <= 0:
        return Load(full, queue, 0.0)
    latency = view.mean_hold(d)
    lanes = cap or (server.running if server is not None and server.running else 1)
    return Load(full, queue, None if latency is None else ahead * latency * 1000 / lanes)


def holds(cond: Condition, loads: Sequence[Load]) -> bool:
    """Does ``spill_when`` hold for the candidates' ``loads``? (No candidate: no.)"""
    if not loads:
        return False
    if cond.subject == "saturated":
        return all(x.full for x in loads)
    if cond.subject == "queue_depth":
        return all(compare(x.queue, cond.op, cond.value) for x in loads)
    if cond.subject == "queue_wait_ms":
        waits = [x.wait_ms for x in loads]
        return all(w is not None for w in waits) and compare(min(waits), cond.op, cond.value)  # type: ignore[type-var]
    return False


def describe(cond: Condition, loads: Sequence[Load]) -> str:
    """What the trace says of the candidates' loads when ``cond`` held."""
    if cond.subject == "queue_wait_ms":
        return f"expected wait {min(x.wait_ms or 0.0 for x in loads):.0f} ms"
    if cond.subject == "queue_depth":
        return f"queues {', '.join(str(x.queue) for x in loads)}"
    return "all at max_parallel_requests"


def parse_spill(text: Any) -> Condition:
    """``saturated``, ``queue_depth <op> N`` or ``queue_wait_ms <op> N``."""
    s = str(text).strip()
    if s == "saturated":
        return Condition("saturated")
    for subject in SUBJECTS[1:]:
        if s.startswith(subject):
            rest = s[len(subject):].strip()
            op = next((o for o in (">=", "<=", "==", "!=", ">", "<") if rest.startswith(o)), None)
            if op is not None:
                try:
                    value = float(rest[len(op):].strip())
                except ValueError:
                    break
                if value >= 0:
                    return Condition(subject, op, value)
            break
    raise ValueError(f"cannot parse spill_when {s!r} (expected 'saturated', 'queue_depth > N' or 'queue_wait_ms > N')")
