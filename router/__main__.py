"""Command line: ``llm-router serve | check-config | simulate`` (also ``python -m router``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any, AsyncIterator, Callable, Sequence
from urllib.parse import urlsplit

from aiohttp import web

from router import __version__, log, systemd
from router.checks import unix_socket
from router.config import DEFAULT_CONFIG, Config, ConfigError, load_config, read_files

EXIT_CONFIG = 2


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=os.environ.get("LLM_ROUTER_CONFIG", DEFAULT_CONFIG),
                   help=f"LiteLLM-format config (env LLM_ROUTER_CONFIG; default {DEFAULT_CONFIG})")
    p.add_argument("--mappings", default=os.environ.get("LLM_ROUTER_MAPPINGS"),
                   help="routing policy file (env LLM_ROUTER_MAPPINGS; default model-mappings.yaml beside the config, if present)")


def _log_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=("human", "json"), default="human")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")


def _number(kind: type, minimum: float) -> Callable[[str], Any]:
    """An argparse ``type``: ``kind(text)``, at least ``minimum``."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value >= minimum:  # NaN too
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}: {text!r}")
        return value
    return parse


_non_negative_int, _non_negative_float, _positive_int = _number(int, 0), _number(float, 0), _number(int, 1)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llm-router", description="OpenAI-compatible routing proxy for local LLM servers")
    ap.add_argument("--version", action="version", version=f"llm-router {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    _config_args(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=int(os.environ.get("LLM_ROUTER_PORT", "4000")))
    serve.add_argument("--ollama-port", type=int, default=int(os.environ.get("LLM_ROUTER_OLLAMA_PORT", "0")) or None,
                       help="also serve on this port (e.g. 11434, for clients that hard-code Ollama's; env LLM_ROUTER_OLLAMA_PORT)")
    serve.add_argument("--workers", type=int, default=int(os.environ.get("LLM_ROUTER_WORKERS", "1")),
                       help="worker processes on the port (env LLM_ROUTER_WORKERS; default 1)")
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # set by the supervisor
    serve.add_argument("--allow-unauthenticated", action="store_true",
                       help="serve without any API key on a non-loopback address (refused otherwise)")
    serve.add_argument("--log-bodies", action="store_true",
                       help="put request bodies (message contents!) in the [ROUTER] lines; off by default")
    _log_args(serve)

    check = sub.add_parser("check-config", help="validate the configuration and exit (0 valid, 2 invalid)")
    _config_args(check)
    check.add_argument("--strict", action="store_true",
                       help="deployments of providers llm-router does not speak (disabled, a warning) are errors")

    ex = sub.add_parser("explain", help="print the routing decision for a hypothetical request (sends nothing)")
    _config_args(ex)
    ex.add_argument("model", nargs="?", help="the model name the request would carry")
    ex.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'",
                    help="a request header, e.g. -H 'X-Capability: code_generation' (repeatable)")
    ex.add_argument("--stream", action="store_true", help="a streaming request")
    ex.add_argument("--batch-size", type=int, default=1, help="n, or the number of prompts")
    ex.add_argument("--endpoint", choices=("chat", "completions", "embeddings"), default="chat")
    ex.add_argument("--json", action="store_true", help="print the decision as JSON")

    probe = sub.add_parser("health-probe", help="ask a running router for its backends' health; exit 0 all up, 1 degraded (some down), 2 down (router unreachable or every backend down)")
    probe.add_argument("--url", default=os.environ.get("LLM_ROUTER_URL", f"http://127.0.0.1:{os.environ.get('LLM_ROUTER_PORT', '4000')}"),
                       help="the router (env LLM_ROUTER_URL; default http://127.0.0.1:4000)")
    probe.add_argument("--key", default=os.environ.get("LLM_ROUTER_MASTER_KEY"), help="master key (env LLM_ROUTER_MASTER_KEY)")
    probe.add_argument("--deployment", action="append", default=[], help="only these deployment ids (repeatable)")
    probe.add_argument("--timeout", type=float, default=10.0)
    probe.add_argument("--json", action="store_true", help="print the router's /health JSON")

    tr = sub.add_parser("test-routing", help="send a tiny request for every model name and capability in the config "
                        "through a running router and print where each went")
    _config_args(tr)
    tr.add_argument("--url", default=os.environ.get("LLM_ROUTER_URL", f"http://127.0.0.1:{os.environ.get('LLM_ROUTER_PORT', '4000')}"))
    tr.add_argument("--key", default=os.environ.get("LLM_ROUTER_MASTER_KEY"))
    tr.add_argument("--dry-run", action="store_true", help="ask /router/explain instead of sending prompts")
    tr.add_argument("--json", action="store_true")
    tr.add_argument("--timeout", type=float, default=60.0)

    sim = sub.add_parser("simulate", help="start simulated backends on every api_base of the config")
    _config_args(sim)
    sim.add_argument("--ttft", type=float, default=0.05, help="seconds before the first token (default 0.05)")
    sim.add_argument("--tokens-per-s", type=float, default=50.0, help="generation speed, 0 = unlimited (default 50)")
    sim.add_argument("--prefix-cache-tokens", type=_non_negative_int, default=None, metavar="N",
                     help="each server keeps a prompt cache of N tokens (LRU of blocks; llama-cpp-python: its last "
                          "prompt) and reports the cached tokens natively (default: no cache model)")
    sim.add_argument("--prefill-tokens-per-s", type=_non_negative_float, default=0.0, metavar="X",
                     help="with --prefix-cache-tokens: prefill speed; the uncached tokens cost uncached/X seconds "
                          "before the first token, on top of --ttft (default 0 = no prefill time)")
    sim.add_argument("--cache-block-tokens", type=_positive_int, default=16, metavar="B",
                     help="prompt cache block size in tokens (default 16, vLLM's)")
    _log_args(sim)
    return ap


def load_or_exit(args: argparse.Namespace, files: dict[str, bytes | None] | None = None) -> Config:
    """Load the configuration (``files``: its bytes, ``read_files``), or print
    ``file:line: key.path: problem`` lines and exit 2."""
    try:
        return load_config(args.config, args.mappings, mappings_required=args.mappings is not None, files=files)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"llm-router: configuration is invalid ({len(exc.issues)} problem(s))", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def _warn(config: Config) -> None:
    for w in sorted(config.warnings, key=lambda i: (i.file, i.line)):
        print(f"warning: {w}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    config = load_or_exit(args)
    if args.strict and config.unserved:
        for issue in config.unserved:
            print(issue, file=sys.stderr)
        print(f"llm-router: configuration is invalid under --strict ({len(config.unserved)} problem(s))", file=sys.stderr)
        return EXIT_CONFIG
    _warn(config)
    files = config.file + (f" + {config.mappings_file}" if config.mappings_file else "")
    print(f"OK {files}: {config.summary()}, {len(config.warnings)} warning(s)")
    return 0


def is_loopback(host: str) -> bool:
    """Does ``host`` only ever mean this machine? (A name must resolve to loopback only.)"""
    import ipaddress
    import socket

    if host in ("", "*"):
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def raise_fd_limit(max_connections: int) -> None:
    """Client connections, backend connections and files all need descriptors: raise
    the soft limit towards the hard one, and say so if max_connections cannot fit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections * 2 + 256  # a client connection may hold an upstream one
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        log.get("SERVER").warning(f"The open-file limit ({soft}) is below what max_connections {max_connections} may need "
                                  f"({want}); raise LimitNOFILE / ulimit -n or lower general_settings.max_connections")


def cmd_serve(args: argparse.Namespace) -> int:
    # A SIGHUP (reload) that arrives before the handler is installed must not kill us:
    # ignore it until the event loop takes it over.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from router import server
    from router.app import PROXY, create_app, reload_config

    log.configure(args.log_format, args.log_level)
    from router.workers import GENERATION_ENV, SNAPSHOT_ENV, read_snapshot_fd

    files = None  # under --workers, every process loads the same bytes (router.workers.supervise)
    if args.worker and os.environ.get(SNAPSHOT_ENV):
        files = read_snapshot_fd(int(os.environ[SNAPSHOT_ENV]))
    elif args.workers > 1 and not args.worker:
        files = read_files(args.config, args.mappings)
    config = load_or_exit(args, files)
    if not config.api_keys and not is_loopback(args.host):
        if not args.allow_unauthenticated:
            print(f"llm-router: refusing to listen on {args.host} without an API key: anyone who can reach this port "
                  "could use (and reconfigure) the backends. Set general_settings.master_key (or LLM_ROUTER_MASTER_KEY), "
                  "listen on 127.0.0.1, or pass --allow-unauthenticated.", file=sys.stderr)
            return EXIT_CONFIG
        if not args.worker:
            log.get("SERVER").warning(f"UNAUTHENTICATED: listening on {args.host} with no API key (--allow-unauthenticated): "
                                      "anyone who can reach this port can use every backend and the admin endpoints")
    raise_fd_limit(config.limits.max_connections)
    if args.worker:
        from router.workers import follow_supervisor

        follow_supervisor()
    if args.workers > 1 and not args.worker:
        from router.shared import redis_url
        from router.workers import supervise

        if not redis_url(config.router):
            log.get("SERVER").warning(f"{args.workers} workers without Redis: each keeps its own cooldowns, counters and "
                                      "statistics; set router_settings.redis_host (or redis_url) to share them")
        return supervise(sys.argv[1:], args.workers, config.router.shutdown_grace_period, (args.host, args.port),
                         (args.config, args.mappings), files)
    logger = log.get("CONFIG")
    if not args.worker or os.environ.get("LLM_ROUTER_WORKER") == "1":
        for w in sorted(config.warnings, key=lambda i: (i.file, i.line)):
            logger.warning(str(w))
    app = create_app(config)
    app[PROXY].log_bodies = args.log_bodies
    if args.worker and os.environ.get(GENERATION_ENV, "").isdigit():
        app[PROXY].metrics.reloaded(int(os.environ[GENERATION_ENV]))  # a replacement: the generation it starts on
    link = None
    if args.worker:
        from router.app import SUPERVISOR_LINK
        from router.workers import SupervisorLink

        link = SupervisorLink.from_env()  # heartbeats, and reloads of every worker
        if link is not None:
            app[SUPERVISOR_LINK] = link

    def announce() -> None:
        """Called once the port is bound: log it, and tell systemd (Type=notify)."""
        worker = os.environ.get("LLM_ROUTER_WORKER") if args.worker else None
        also = f" and :{args.ollama_port} (Ollama's API)" if args.ollama_port and args.ollama_port != args.port else ""
        log.get("SERVER").info(f"llm-router {__version__} listening on http://{args.host}:{args.port}{also}"
                               + (f" (worker {worker})" if worker else ""),
                               config=config.file, mappings=config.mappings_file, summary=config.summary())
        if not args.worker:
            systemd.ready(f"serving on {args.host}:{args.port}")

    async def reload(app: web.Application) -> None:
        if link is not None:  # a SIGHUP sent to one worker: every worker reloads, as the supervisor's
            await link.reload_all()
            return
        if not args.worker:
            systemd.reloading("reloading the configuration")
        ok = False
        try:
            ok, _ = await reload_config(app)
        finally:
            if not args.worker:
                systemd.ready("serving" if ok else "serving (reload refused)")

    async def background(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        if link is not None:  # before the SIGHUP handler, which may use it
            link.start(lambda snapshot, generation: reload_config(app, snapshot, generation))
        reloads: set[asyncio.Task] = set()  # referenced until done (an unreferenced task may be collected mid-way)

        def on_sighup() -> None:
            task = loop.create_task(reload(app))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        watchdog = loop.create_task(systemd.watchdog_loop())
        yield
        watchdog.cancel()
        if link is not None:
            link.close()

    async def farewell(_: web.Application) -> None:
        if not args.worker:
            systemd.stopping("draining in-flight requests")
        log.get("SERVER").info("Shutting down: no new connections; in-flight requests get up to "
                               f"{config.router.shutdown_grace_period:g} s")

    app.cleanup_ctx.append(background)
    app.on_shutdown.append(farewell)
    try:
        server.run(app, config.limits, args.host, args.port, ready=announce, reuse_port=args.worker or None,
                   shutdown_timeout=config.router.shutdown_grace_period,
                   extra_ports=(args.ollama_port,) if args.ollama_port and args.ollama_port != args.port else ())
    except OSError as exc:
        print(f"llm-router: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import orjson

    from router.domain import RequestFacts
    from router.errors import RouterError
    from router.routing.engine import ROUTE_LABELS, Engine
    from router.state import StateTable

    config = load_or_exit(args)
    headers = {}
    for h in args.header:
        name, _, value = h.partition(":")
        headers[name.strip().lower()] = value.strip()
    facts = RequestFacts(model=args.model, endpoint=args.endpoint, stream=args.stream, batch_size=args.batch_size,
                         capability=headers.pop("x-capability", None), headers=headers)
    if facts.model is None and facts.capability is None:
        print("llm-router explain: give a model name and/or -H 'X-Capability: NAME'", file=sys.stderr)
        return EXIT_CONFIG
    try:
        decision = Engine(config).decide(facts, StateTable())
    except RouterError as exc:
        print(f"error {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    if decision is None:
        disabled = config.disabled_reason(facts.model)
        print(f"no route for {facts.model!r}: 404 model_not_found" + (f" (disabled: {disabled})" if disabled else ""),
              file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(decision.explain(), option=orjson.OPT_INDENT_2).decode())
        return 0
    for step in decision.trace:
        print(f"  {step}")
    first = (decision.candidates or decision.last_resort)[0]
    print(f"[ROUTER] Model: {decision.model} -> Provider: {first.provider} ({ROUTE_LABELS[decision.route]}) "
          f"deployment={first.id} model={decision.upstream_name(first)!r}")
    if len(decision.candidates) > 1:
        print("  then: " + ", ".join(d.id for d in decision.candidates[1:]))
    print("  (no load or health state: a live router may order equal candidates differently; "
          "GET /router/explain asks the running one)")
    return 0


def cmd_health_probe(args: argparse.Namespace) -> int:
    import aiohttp
    import orjson

    async def fetch() -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as s:
            async with s.get(args.url.rstrip("/") + "/health", headers=headers) as r:
                return r.status, await r.read()

    try:
        status, raw = asyncio.run(fetch())
        data = orjson.loads(raw)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, orjson.JSONDecodeError) as exc:
        print(f"UNREACHABLE {args.url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 2
    if status != 200:
        print(f"ERROR {args.url}/health answered HTTP {status}: {raw[:200].decode('utf-8', 'replace')}", file=sys.stderr)
        return 2
    if args.json:
        print(raw.decode())
    rows = [(True, r) for r in data.get("healthy_endpoints", [])] + [(False, r) for r in data.get("unhealthy_endpoints", [])]
    if args.deployment:
        rows = [(ok, r) for ok, r in rows if r.get("id") in args.deployment]
        missing = set(args.deployment) - {r.get("id") for _, r in rows}
        if missing:
            print(f"UNKNOWN deployment(s): {', '.join(sorted(missing))}", file=sys.stderr)
            return 2
    down = 0
    for ok, r in sorted(rows, key=lambda x: x[1].get("id", "")):
        up = ok and r.get("state") != "cooldown"
        down += not up
        if not args.json:
            detail = r.get("error") or r.get("last_failure_reason") or ""
            latency = f" probe_ms={r['probe_latency_ms']}" if r.get("probe_latency_ms") is not None else ""
            print(f"{'UP  ' if up else 'DOWN'} {r.get('id')} provider={r.get('provider')} state={r.get('state')}{latency} "
                  f"in_flight={r.get('in_flight')} api_base={r.get('api_base')}{' error=' + repr(detail) if detail and not up else ''}")
    if rows and down == len(rows):
        return 2
    return 1 if down else 0


def cmd_test_routing(args: argparse.Namespace) -> int:
    """The seed's "Test Routing" loop, done right."""
    import time as _time

    import aiohttp
    import orjson

    config = load_or_exit(args)
    names = list(dict.fromkeys([*config.groups, *config.aliases, *config.mappings.exact_matches]))
    targets = [(n, None) for n in names] + [(None, c) for c in config.mappings.capabilities]
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}

    async def one(s: aiohttp.ClientSession, model: str | None, capability: str | None) -> dict:
        h = dict(headers)
        if capability:
            h["X-Capability"] = capability
        start = _time.perf_counter()
        row: dict = {"model": model, "capability": capability}
        try:
            if args.dry_run:
                params = {k: v for k, v in (("model", model), ("capability", capability)) if v}
                async with s.get(args.url.rstrip("/") + "/router/explain", params=params, headers=h) as r:
                    data = await r.json(loads=orjson.loads)
                    row["status"] = r.status
                    if r.status == 200:
                        first = data["candidates"][0] if data["candidates"] else {}
                        row.update(deployment=first.get("deployment"), provider=first.get("provider"), route=data["route"])
                    else:
                        row["error"] = data.get("error", {}).get("message")
            else:
                body = {"model": model or "", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
                async with s.post(args.url.rstrip("/") + "/v1/chat/completions", data=orjson.dumps(body),
                                  headers={**h, "Content-Type": "application/json"}) as r:
                    data = await r.json(loads=orjson.loads)
                    row.update(status=r.status, deployment=r.headers.get("x-router-deployment"),
                               provider=r.headers.get("x-router-provider"), route=r.headers.get("x-router-route"),
                               attempts=r.headers.get("x-router-attempts"))
                    if r.status != 200:
                        row["error"] = (data.get("error") or {}).get("message")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            row.update(status=0, error=f"{type(exc).__name__}: {exc}")
        row["latency_ms"] = round((_time.perf_counter() - start) * 1000, 1)
        return row

    async def run() -> list[dict]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as s:
            return [await one(s, m, c) for m, c in targets]

    rows = asyncio.run(run())
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"{'model / capability':<34} {'status':>6} {'route':<10} {'deployment':<24} {'provider':<18} {'att':>3} {'ms':>8}")
        for r in rows:
            name = r["model"] or f"X-Capability: {r['capability']}"
            print(f"{name[:34]:<34} {r['status']:>6} {str(r.get('route') or '-'):<10} {str(r.get('deployment') or '-')[:24]:<24} "
                  f"{str(r.get('provider') or '-'):<18} {str(r.get('attempts') or '-'):>3} {r['latency_ms']:>8}"
                  + (f"  {r['error']}" if r.get("error") else ""))
    return 0 if all(r["status"] == 200 for r in rows) else 1


def _server_key(api_base: str) -> tuple[str, int]:
    """(host, port) of an api_base; (socket path, 0) for a unix socket."""
    sock = unix_socket(api_base)
    if sock is not None:
        return sock, 0
    url = urlsplit(api_base)
    return url.hostname or "127.0.0.1", url.port or 80


def simulator_specs(config: Config) -> list[tuple[str, str, int, list[str]]]:
    """One simulated server per api_base: (kind, host, port, model names it serves);
    host is the socket's path (port 0) for a unix-socket api_base."""
    servers: dict[tuple[str, int], tuple[str, list[str]]] = {}
    for d in config.all_deployments():
        kind, models = servers.setdefault(_server_key(d.api_base), (d.kind, []))
        if d.upstream_model and "*" not in d.upstream_model and d.upstream_model not in models:
            models.append(d.upstream_model)
    for name, spec in config.mappings.exact_matches.items():
        entry = servers.get(_server_key(config.mappings.providers[spec.provider].api_base))
        if entry and name not in entry[1]:
            entry[1].append(name)
    return [(kind, host, port, models) for (host, port), (kind, models) in servers.items()]


def cmd_simulate(args: argparse.Namespace) -> int:
    from router.simulate import run_simulators

    log.configure(args.log_format, args.log_level)
    config = load_or_exit(args)
    specs = simulator_specs(config)
    for kind, host, port, models in specs:
        log.get("SIMULATE").info(f"{kind} on " + (f"unix://{host}" if host.startswith("/") else f"http://{host}:{port}"),
                                 models=",".join(models))
    try:
        asyncio.run(run_simulators(specs, ttft=args.ttft, tokens_per_s=args.tokens_per_s,
                                   prefix_cache_tokens=args.prefix_cache_tokens,
                                   prefill_tokens_per_s=args.prefill_tokens_per_s,
                                   cache_block_tokens=args.cache_block_tokens))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"llm-router simulate: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    commands = {"serve": cmd_serve, "check-config": cmd_check, "simulate": cmd_simulate, "explain": cmd_explain,
                "health-probe": cmd_health_probe, "test-routing": cmd_test_routing}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
