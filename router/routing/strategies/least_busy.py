"""least-busy / least_loaded: fewest requests in progress.

Load is what this router has in flight to the deployment, or what the backend
itself reports (vLLM ``/metrics`` running + waiting, llama.cpp ``/slots``) when
that is higher — other clients may be using the backend too. Ties are broken
at random so equal backends share the load.
"""

from __future__ import annotations

import random
from typing import Sequence

from router.domain import Deployment, RequestFacts
from router.routing.strategies import Ranked, tie_break
from router.state import StateTable


def load(view: StateTable, d: Deployment) -> int:
    ours = view.in_flight(d)
    theirs = view.backend_load(d)
    return ours if theirs is None else max(ours, theirs)


class LeastBusy:
    name = "least-busy"

    def __init__(self, spec: object = None, provider_weights: object = None) -> None:
        pass

    def order(self, group: str, candidates: Sequence[Deployment], view: StateTable, rng: random.Random,
              facts: RequestFacts) -> Ranked:
        return tie_break([(float(load(view, d)), d) for d in candidates], rng)
