"""The worker's end of the supervisor link (router.workers.SupervisorLink) and what
POST /router/reload answers from the per-worker results the supervisor sends back."""

from __future__ import annotations

import asyncio
import socket

import orjson
from aiohttp.test_utils import TestClient, TestServer

from router.app import SUPERVISOR_LINK, create_app
from router.config import load_config
from router.workers import SupervisorLink

MASTER = "sk-master-0001"


def parse(data: bytes) -> tuple[str, object]:
    kind, _, rest = data.partition(b" ")
    return kind.decode(), orjson.loads(rest)


async def recv(sock: socket.socket, timeout: float = 5) -> tuple[str, object]:
    loop = asyncio.get_running_loop()
    return parse(await asyncio.wait_for(loop.sock_recv(sock, 1 << 18), timeout))


async def test_the_link_beats_from_the_loop_and_acknowledges_a_reload_generation():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    link = SupervisorLink(theirs.detach())
    reloads = []

    async def on_reload(snapshot: str | None, generation: int | None) -> tuple[bool, str]:
        reloads.append(1)
        return len(reloads) == 1, "summary" if len(reloads) == 1 else "c.yaml:3: bad"

    link.start(on_reload)
    try:
        assert await recv(ours) == ("beat", None)
        ours.send(b"reload 7")
        kind, payload = await recv(ours)
        while kind == "beat":
            kind, payload = await recv(ours)
        assert (kind, payload) == ("reloaded", {"gen": 7, "ok": True, "refused": False, "detail": "summary"})
        ours.send(b"reload 8")
        kind, payload = await recv(ours)
        while kind == "beat":
            kind, payload = await recv(ours)
        assert payload == {"gen": 8, "ok": False, "refused": True, "detail": "c.yaml:3: bad"}

        asking = asyncio.ensure_future(link.reload_all())
        kind, payload = await recv(ours)
        while kind == "beat":
            kind, payload = await recv(ours)
        assert kind == "reload-request"
        rows = [{"worker": 1, "ok": True, "refused": False, "detail": "s"}]
        ours.send(b"result " + orjson.dumps({"id": payload["id"], "workers": rows}))
        assert await asyncio.wait_for(asking, 5) == rows
    finally:
        link.close()
        ours.close()


class FakeLink:
    def __init__(self, rows):
        self.rows = rows

    async def reload_all(self):
        return self.rows


async def answer(tmp_path, rows) -> tuple[int, dict]:
    (tmp_path / "c.yaml").write_text(
        "model_list:\n  - {model_name: one, litellm_params: {model: openai/tiny, api_base: 'http://127.0.0.1:9/v1'}}\n"
        f"general_settings: {{master_key: {MASTER}}}\n")
    app = create_app(load_config(str(tmp_path / "c.yaml")))
    app[SUPERVISOR_LINK] = FakeLink(rows)
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/router/reload", headers={"Authorization": f"Bearer {MASTER}"})
        return r.status, await r.json()


def row(worker: int, ok: bool, refused: bool = False, detail: str = "summary") -> dict:
    return {"worker": worker, "ok": ok, "refused": refused, "detail": detail}


async def test_reload_answers_200_only_when_every_worker_switched(tmp_path):
    status, body = await answer(tmp_path, [row(1, True), row(2, True)])
    assert (status, body["status"], body["workers"]) == (200, "reloaded", 2)


async def test_reload_answers_400_with_the_problems_when_every_worker_refused(tmp_path):
    status, body = await answer(tmp_path, [row(1, False, True, "c.yaml:2: general_settings.master_key: bad")] * 2)
    assert status == 400 and body["error"]["code"] == "invalid_config"
    assert "c.yaml:2: general_settings.master_key: bad" in body["error"]["message"]


async def test_reload_answers_503_naming_the_workers_that_did_not_switch(tmp_path):
    status, body = await answer(tmp_path, [row(1, True), row(2, False, detail="no acknowledgement within 15 s")])
    assert status == 503 and body["error"]["code"] == "reload_incomplete"
    assert "1 of 2 workers" in body["error"]["message"] and "worker 2: no acknowledgement" in body["error"]["message"]
    status, body = await answer(tmp_path, None)  # the supervisor did not answer
    assert status == 503 and body["error"]["code"] == "reload_incomplete"
