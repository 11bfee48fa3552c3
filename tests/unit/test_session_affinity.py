"""Session affinity in the engine: a pin holds while its deployment is available and within
the load bound, moves when it is not, expires after its TTL; new sessions are placed by
their id the same way in every process."""

from __future__ import annotations

import random
import time

from router.config import load_config
from router.domain import RequestFacts
from router.routing.engine import Engine
from router.state import StateTable


def engine(tmp_path, router: str) -> Engine:
    lines = ["model_list:"] + [f"  - {{model_name: grp, litellm_params: {{model: hosted_vllm/m, api_base: 'http://127.0.0.1:{9000 + i}/v1'}}, "
                               f"model_info: {{id: d{i}}}}}" for i in range(4)]
    (tmp_path / "c.yaml").write_text("\n".join(lines) + f"\nrouter_settings: {{{router}}}\n")
    return Engine(load_config(str(tmp_path / "c.yaml")), random.Random(0))


def first(e: Engine, view: StateTable, session: str | None) -> tuple[str, str]:
    d = e.decide(RequestFacts(model="grp", session=session), view)
    return d.candidates[0].id, d.route


def test_new_sessions_are_placed_by_their_id_alike_everywhere_and_spread(tmp_path):
    e1 = engine(tmp_path, "routing_strategy: simple-shuffle, optional_pre_call_checks: [session_affinity]")
    e2 = Engine(e1.config, random.Random(99))
    homes = {s: first(e1, StateTable(), s) for s in (f"s{i}" for i in range(40))}
    assert all(first(e2, StateTable(), s) == homes[s] for s in homes)  # another process, another rng: the same
    assert {r for _, r in homes.values()} == {"session"}
    assert len({d for d, _ in homes.values()}) == 4


def test_a_pin_holds_within_the_bound_and_yields_above_it(tmp_path):
    e = engine(tmp_path, "routing_strategy: round_robin, optional_pre_call_checks: [session_affinity]")
    view = StateTable()
    dep = {d.id: d for d in e.config.deployments}
    view.sessions.set("s", "d2", time.time() + 60)
    assert first(e, view, "s") == ("d2", "session")
    for _ in range(3):
        view.started(dep["d2"])  # d2 busy: ceil(1.25 × 4 / 4) = 2, so a load of 3 is over
    moved, route = first(e, view, "s")
    assert moved != "d2" and route == "session"
    decision = e.decide(RequestFacts(model="grp", session="s"), view)
    assert any("d2 is over the load bound; moves to" in t for t in decision.trace)


def test_a_pin_to_a_cooling_deployment_moves_and_an_expired_pin_is_gone(tmp_path):
    e = engine(tmp_path, "routing_strategy: round_robin, optional_pre_call_checks: [session_affinity], allowed_fails: 0")
    view = StateTable(e.config.health_policy())
    dep = {d.id: d for d in e.config.deployments}
    view.sessions.set("s", "d1", time.time() + 60)
    view.failed(dep["d1"], "boom")
    decision = e.decide(RequestFacts(model="grp", session="s"), view)
    assert decision.candidates[0].id != "d1"
    assert any("d1 is unavailable" in t for t in decision.trace)
    view.sessions.set("t", "d3", time.time() - 1)  # its TTL passed
    decision = e.decide(RequestFacts(model="grp", session="t"), view)
    assert any(": new," in t for t in decision.trace)


def test_sessions_are_ignored_without_the_check_and_honoured_under_cache_aware(tmp_path):
    plain = engine(tmp_path, "routing_strategy: round_robin")
    assert first(plain, StateTable(), "s")[1] == "exact"
    assert not plain.wants_session
    cache = engine(tmp_path, "routing_strategy: cache-aware")
    assert cache.wants_session and cache.wants_prompt
    assert first(cache, StateTable(), "s")[1] == "session"
