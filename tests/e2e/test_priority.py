"""Priority and fair admission through the proxy, against a serial simulated server, with
the official openai and anthropic clients: an interactive request overtakes queued batch
jobs, keys take turns, a full class queue answers 429 with Retry-After, a queue timeout
gets its documented error, the body's ``priority`` is the router's (vLLM with priority
scheduling gets an integer), a client that leaves the queue frees nothing it did not
hold, and /health, /metrics, explain and the [ROUTER] line show it all."""

from __future__ import annotations

import asyncio
import io
import re

import aiohttp
import orjson
import anthropic
import openai
import pytest

from router import log
from router.config import load_config
from router.simulate import SimulatedBackend
from tests.conftest import start_proxy

MASTER = "sk-master-priority-0001"
KEYS = {"batch": "sk-batch-key-00001", "batch2": "sk-batch-key-00002", "alice": "sk-alice-key-00001",
        "bob": "sk-bob-key-0000001", "capped": "sk-capped-key-0001"}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def sim():
    s = SimulatedBackend("vllm", ["m"], tokens_per_s=200, max_num_seqs=1)
    await s.start()
    yield s
    await s.stop()


async def start(tmp_path, sim, priority: str = "{}", router: str = "", info: str = "", buf: io.StringIO | None = None):
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - model_name: m
    litellm_params: {{model: hosted_vllm/m, api_base: "{sim.base_url}/v1", max_parallel_requests: 1}}
    model_info: {{id: serial{info}}}
router_settings: {{priority: {priority}{router}}}
general_settings:
  master_key: {MASTER}
  api_keys:
    - {{name: batch, key: {KEYS['batch']}, priority: batch}}
    - {{name: batch2, key: {KEYS['batch2']}, priority: batch}}
    - {{name: alice, key: {KEYS['alice']}, priority: interactive}}
    - {{name: bob, key: {KEYS['bob']}}}
    - {{name: capped, key: {KEYS['capped']}, priority: batch, max_priority: default}}
""")
    if buf is not None:
        log.configure("human", "info", stream=buf)
    return await start_proxy(load_config(str(tmp_path / "c.yaml")))


OPEN: list[openai.AsyncOpenAI] = []


def client(url: str, key: str) -> openai.AsyncOpenAI:
    c = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEYS.get(key, key), max_retries=0, timeout=30)
    OPEN.append(c)
    return c


@pytest.fixture(autouse=True)
async def _close_clients():
    yield
    while OPEN:
        await OPEN.pop().close()


async def queue(url: str) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/health", headers={"Authorization": f"Bearer {MASTER}"}) as r:
            assert r.status == 200
            return (await r.json())["queue"]


async def until_waiting(url: str, n: int) -> None:
    """Until ``n`` requests wait in the router's queue (what /health says; no sleeps)."""
    for _ in range(2000):
        q = await queue(url)
        if sum(c["waiting"] for c in q["classes"].values()) == n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the queue never held {n}: {q}")


async def hold(sim, url: str) -> asyncio.Task:
    """Occupy the only slot with a request the server holds until ``sim.faults.hang`` is cleared."""
    sim.faults.hang, sim.faults.hang_count, sim.faults.paths = True, 1, ("/v1/chat/completions",)
    c = client(url, "bob")
    task = asyncio.ensure_future(c.chat.completions.create(model="m", messages=HI, max_tokens=2))
    for _ in range(2000):
        if sim.stats.open == 1:
            return task
        await asyncio.sleep(0.005)
    raise AssertionError("the holder never reached the server")


async def test_an_interactive_request_overtakes_queued_batch_jobs_and_keys_take_turns(tmp_path, sim):
    buf = io.StringIO()
    runner, url = await start(tmp_path, sim, "{aging_seconds: 0}", buf=buf)
    done: list[str] = []

    async def send(key: str, label: str, stream: bool = False) -> None:
        c = client(url, key)
        try:
            if stream:
                chunks = [ch async for ch in await c.chat.completions.create(model="m", messages=HI, max_tokens=5, stream=True)]
                assert chunks and chunks[-1].choices[0].finish_reason is not None  # whole, not cut
            else:
                r = await c.chat.completions.create(model="m", messages=HI, max_tokens=5)
                assert r.choices[0].message.content
            done.append(label)
        finally:
            await c.close()

    try:
        holder = await hold(sim, url)
        tasks = [asyncio.ensure_future(send("batch", f"batch{i}")) for i in range(5)]
        await until_waiting(url, 5)
        tasks.append(asyncio.ensure_future(send("batch2", "batch2-first")))
        await until_waiting(url, 6)
        tasks.append(asyncio.ensure_future(send("alice", "alice", stream=True)))
        await until_waiting(url, 7)
        q = await queue(url)
        assert q["classes"]["batch"]["waiting"] == 6 and q["classes"]["interactive"]["waiting"] == 1
        assert q["keys"] == {"batch": {"batch": 5}, "batch2": {"batch": 1}, "alice": {"interactive": 1}}
        sim.faults.hang = False
        await holder
        await asyncio.gather(*tasks)
        assert done[0] == "alice"  # past six batch jobs that waited before it
        assert done.index("batch2-first") <= 2  # not behind the other key's five
        assert done.count("alice") == 1 and len(done) == 7
        assert (await queue(url))["classes"]["batch"]["waiting"] == 0
        lines = [ln for ln in buf.getvalue().splitlines() if "[ROUTER]" in ln and "queued_ms=" in ln]
        assert len(lines) == 7
        alice = [ln for ln in lines if "priority=interactive" in ln]
        assert len(alice) == 1 and float(re.search(r"queued_ms=([\d.]+)", alice[0]).group(1)) > 0
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/metrics", headers={"Authorization": f"Bearer {MASTER}"}) as r:
                text = await r.text()
        assert re.search(r'llm_router_queue_wait_seconds_count\{class="interactive",key="alice"\} 1\.0', text)
        assert re.search(r'llm_router_queue_wait_seconds_count\{class="batch",key="batch"\} 5\.0', text)
        assert re.search(r'llm_router_queue_waiting\{class="batch",key="batch"\} 0\.0', text)
    finally:
        sim.faults.hang = False
        await runner.cleanup()


async def test_a_full_class_queue_answers_429_with_retry_after_and_other_classes_still_queue(tmp_path, sim):
    runner, url = await start(tmp_path, sim, "{queue_limit: {batch: 2}}")
    try:
        holder = await hold(sim, url)
        c = client(url, "batch")
        waiting = [asyncio.ensure_future(c.chat.completions.create(model="m", messages=HI, max_tokens=2)) for _ in range(2)]
        await until_waiting(url, 2)
        with pytest.raises(openai.RateLimitError) as exc:
            await c.chat.completions.with_raw_response.create(model="m", messages=HI, max_tokens=2)
        err = exc.value
        assert err.code == "queue_full" and err.body["type"] == "rate_limit_error"
        assert int(err.response.headers["retry-after"]) >= 1
        assert "`batch` requests are waiting" in err.message
        mine = asyncio.ensure_future(client(url, "alice").chat.completions.create(model="m", messages=HI, max_tokens=2))
        await until_waiting(url, 3)  # interactive has its own queue
        sim.faults.hang = False
        await asyncio.gather(holder, mine, *waiting)
    finally:
        sim.faults.hang = False
        await runner.cleanup()


async def test_a_request_that_outwaits_queue_timeout_gets_a_429_saying_so(tmp_path, sim):
    runner, url = await start(tmp_path, sim, router=", queue_timeout: 0.3")
    try:
        holder = await hold(sim, url)
        with pytest.raises(openai.RateLimitError) as exc:
            await client(url, "alice").chat.completions.create(model="m", messages=HI, max_tokens=2)
        assert exc.value.code == "max_parallel_requests"
        assert "busy at max_parallel_requests for 0.3 s" in exc.value.message
        assert exc.value.response.headers["retry-after"] == "1"
        assert (await queue(url))["classes"]["interactive"]["waiting"] == 0
        sim.faults.hang = False
        await holder
        # the slot is free again: the next request goes straight through
        r = await client(url, "alice").chat.completions.with_raw_response.create(model="m", messages=HI, max_tokens=2)
        assert r.status_code == 200
    finally:
        sim.faults.hang = False
        await runner.cleanup()


async def test_clients_that_leave_the_queue_leave_nothing_behind(tmp_path, sim):
    runner, url = await start(tmp_path, sim)
    try:
        holder = await hold(sim, url)
        gone = [asyncio.ensure_future(client(url, "batch").chat.completions.create(model="m", messages=HI, max_tokens=2))
                for _ in range(3)]
        stays = asyncio.ensure_future(client(url, "bob").chat.completions.create(model="m", messages=HI, max_tokens=2))
        await until_waiting(url, 4)
        for t in gone:
            t.cancel()
        await until_waiting(url, 1)
        sim.faults.hang = False
        await holder
        assert (await stays).choices[0].message.content
        # nothing leaked: a burst after it is served one by one, to the end
        c = client(url, "bob")
        answers = await asyncio.gather(*(c.chat.completions.create(model="m", messages=HI, max_tokens=2) for _ in range(6)))
        assert len(answers) == 6 and (await queue(url))["classes"]["default"]["waiting"] == 0
    finally:
        sim.faults.hang = False
        await runner.cleanup()


async def test_the_priority_field_is_the_routers_and_vllm_with_priority_scheduling_gets_an_integer(tmp_path, sim):
    runner, url = await start(tmp_path, sim)
    try:
        c = client(url, "bob")
        await c.chat.completions.create(model="m", messages=HI, max_tokens=2, extra_body={"priority": "batch"})
        assert "priority" not in sim.stats.last_body
        await c.chat.completions.create(model="m", messages=HI, max_tokens=2, extra_body={"priority": 0})
        assert "priority" not in sim.stats.last_body
    finally:
        await runner.cleanup()
    runner, url = await start(tmp_path, sim, info=", scheduling_policy: priority")
    try:
        c = client(url, "bob")
        for asked, sent in (("interactive", -1), ("batch", 1), (None, 0)):
            extra = {"priority": asked} if asked else {}
            await c.chat.completions.create(model="m", messages=HI, max_tokens=2, extra_body=extra)
            assert sim.stats.last_body["priority"] == sent
        # a key's ceiling holds for what reaches vLLM too
        await client(url, "capped").chat.completions.create(model="m", messages=HI, max_tokens=2,
                                                            extra_headers={"X-Priority": "high"})
        assert sim.stats.last_body["priority"] == 0
    finally:
        await runner.cleanup()


async def test_an_unknown_priority_is_a_400_in_the_clients_own_dialect(tmp_path, sim):
    runner, url = await start(tmp_path, sim)
    try:
        with pytest.raises(openai.BadRequestError) as exc:
            await client(url, "bob").chat.completions.create(model="m", messages=HI, max_tokens=2,
                                                             extra_headers={"X-Priority": "asap!!"})
        assert exc.value.code == "invalid_priority" and exc.value.body["param"] == "priority"
        assert "interactive, default, batch" in exc.value.message
        a = anthropic.AsyncAnthropic(base_url=url, api_key=KEYS["bob"], max_retries=0)
        with pytest.raises(anthropic.BadRequestError) as aexc:
            await a.messages.create(model="m", max_tokens=2, messages=HI, extra_body={"priority": {"x": 1}})
        assert aexc.value.body["type"] == "error" and aexc.value.body["error"]["type"] == "invalid_request_error"
        await a.close()
        assert sim.stats.requests["/v1/chat/completions"] == sim.stats.requests["/v1/messages"] == 0  # refused before any backend
    finally:
        await runner.cleanup()


async def test_explain_says_which_class_a_request_gets_and_why(tmp_path, sim):
    runner, url = await start(tmp_path, sim, "{reserve: {interactive: 0}}")
    admin = {"Authorization": f"Bearer {MASTER}"}
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/router/explain", params={"model": "m", "key": "batch"}, headers=admin) as r:
                p = (await r.json())["priority"]
            assert p["class"] == "batch" and p["why"] == "key 'batch'" and p["would_wait"] is False
            async with s.get(url + "/router/explain", params=[("model", "m"), ("key", "capped"), ("header", "X-Priority: high")],
                             headers=admin) as r:
                p = (await r.json())["priority"]
            assert p["class"] == "default"
            assert p["why"] == "header x-priority 'high', lowered to default by the max_priority of key 'capped'"
            async with s.post(url + "/router/explain", params={"endpoint": "chat"}, headers=admin,
                              json={"model": "m", "messages": HI, "priority": 0}) as r:
                p = (await r.json())["priority"]
            assert p["class"] == "interactive" and p["why"] == "body priority 0"
            async with s.get(url + "/router/explain", params={"model": "m", "key": "nobody"}, headers=admin) as r:
                assert r.status == 400
            holder = await hold(sim, url)
            async with s.get(url + "/router/explain", params={"model": "m"}, headers=admin) as r:
                assert (await r.json())["priority"]["would_wait"] is True
            sim.faults.hang = False
            await holder
    finally:
        sim.faults.hang = False
        await runner.cleanup()


async def test_requests_queued_behind_a_deployment_that_cools_down_are_answered_at_once(tmp_path, sim):
    """The slot a failed request frees on a deployment now cooling down is handed to the next
    waiter, which cannot use it: it must get its answer (a 429 saying so) at once, not spin
    for the cooldown holding the event loop (which froze /health and every other request)."""
    runner, url = await start(tmp_path, sim, router=", num_retries: 0")
    try:
        sim.faults.status, sim.faults.retry_after = 429, 8
        first = await hold(sim, url)
        second = asyncio.ensure_future(client(url, "bob").chat.completions.create(model="m", messages=HI, max_tokens=2))
        await until_waiting(url, 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        sim.faults.hang = False  # the first now gets its 429 (Retry-After 8): the deployment cools down
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert all(isinstance(r, openai.RateLimitError) for r in results), results
        assert loop.time() - started < 4  # not the 8 s cooldown
        await queue(url)  # and the router answers meanwhile
    finally:
        sim.faults.hang = False
        sim.faults.status = None
        await runner.cleanup()


async def test_many_tenants_a_big_split_upload_and_streams_all_come_through_the_queue_whole(tmp_path, sim):
    """Real traffic's shapes through the admission queue: 24 tenants without keys (their turn
    is their body's ``user``), each queued behind a held slot with a streamed chat, and one
    tenant's 800 KB prompt (the simulated server's limit is 1 MB) uploaded in 64 KB pieces (chunked); every answer is whole, and
    tenants take turns: the big upload's tenant does not go before the others' first."""
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - model_name: m
    litellm_params: {{model: hosted_vllm/m, api_base: "{sim.base_url}/v1", max_parallel_requests: 1}}
    model_info: {{id: serial}}
router_settings: {{priority: {{aging_seconds: 0}}}}
""")
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    order: list[str] = []
    try:
        holder = await hold(sim, url)
        big = {"model": "m", "max_tokens": 2, "user": "tenant-big", "stream": True,
               "messages": [{"role": "user", "content": "x " * 400_000}]}
        raw = orjson.dumps(big)

        async def pieces():
            for i in range(0, len(raw), 65536):
                yield raw[i:i + 65536]
                await asyncio.sleep(0)

        async def send(user: str, data) -> None:
            async with aiohttp.ClientSession() as s:
                async with s.post(url + "/v1/chat/completions", data=data,
                                  headers={"Content-Type": "application/json"}) as r:
                    text = await r.text()
            assert r.status == 200, text[:300]
            assert text.rstrip().endswith("data: [DONE]"), text[-200:]
            order.append(user)

        tasks = [asyncio.ensure_future(send("tenant-big", pieces()))]
        await until_waiting(url, 1)
        for i in range(3):  # the big tenant queues two more behind its upload
            tasks.append(asyncio.ensure_future(send("tenant-big", orjson.dumps({**big, "messages": HI}))))
        await until_waiting(url, 4)
        for i in range(24):
            body = {"model": "m", "max_tokens": 2, "user": f"tenant-{i}", "stream": True, "messages": HI}
            tasks.append(asyncio.ensure_future(send(f"tenant-{i}", orjson.dumps(body))))
        await until_waiting(url, 28)
        sim.faults.hang = False
        await holder
        await asyncio.gather(*tasks)
        assert len(order) == 28
        assert order.count("tenant-big") == 4
        assert order[:12].count("tenant-big") <= 1  # its other requests wait for the other tenants' turns
        assert (await queue_open(url)) == 0
    finally:
        sim.faults.hang = False
        await runner.cleanup()


async def queue_open(url: str) -> int:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/health") as r:
            q = (await r.json())["queue"]
    return sum(c["waiting"] for c in q["classes"].values())
