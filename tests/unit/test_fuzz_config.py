"""Hostile and random configuration files: the loader answers with a ``Config`` or a
``ConfigError`` whose every issue is located (``file:line: key.path: problem``), never
an unhandled exception, a hang, or a blown-up memory.

Two generators: random text/bytes (YAML syntax, tags, anchors, invalid UTF-8, and
mutations of the shipped files), and structured documents built from the real key
vocabulary with random wrong types, so that the semantic checks deep inside
``router.config`` and ``router.policy`` are reached too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from router.config import Config, ConfigError, load_config
from router.domain import PREFIX_KINDS, WIRE_FORMATS
from router.routing import strategies as routing_strategies

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = (ROOT / "config/litellm-unified.yaml").read_bytes()
SHIPPED_MAPPINGS = (ROOT / "config/model-mappings.yaml").read_bytes()
SMALL_MAPPINGS = b"providers:\n  ollama: {type: ollama, api_base: 'http://127.0.0.1:11434'}\n"
# Random exploration locally (it finds new cases over time); the same examples every time under CI.
FUZZ = settings(max_examples=250, deadline=None, derandomize=bool(os.environ.get("CI")),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("fuzzcfg")
    return str(d / "config.yaml"), str(d / "mappings.yaml")


@contextmanager
def _environment_kept():
    """``environment_variables`` sets os.environ: each example starts from the same one."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _located(issue, sizes: dict[str, int]) -> None:
    assert issue.file in sizes, issue
    if issue.line == 0:  # the whole file (it cannot be read)
        assert issue.path == "(file)", issue
    else:
        assert 1 <= issue.line <= sizes[issue.file] + 1, (issue, sizes)
    text = str(issue)
    assert text.startswith(f"{issue.file}:{issue.line}: "), text
    assert issue.path and issue.message, issue
    assert "\n" not in text and text.isprintable(), text  # one line per issue on the terminal
    text.encode("utf-8")  # printable to a UTF-8 terminal (no lone surrogates)


def _lines(data: bytes) -> int:
    """Lines as YAML counts them (NEL, LS, PS and a lone CR break lines too)."""
    try:
        return len(re.findall("\r\n|[\r\n\x85\u2028\u2029]", data.decode("utf-8"))) + 1
    except UnicodeDecodeError:
        return data.count(b"\n") + 1


def check_load(files: tuple[str, str], config: bytes, mappings: bytes | None) -> Config | None:
    """Load ``config`` (and ``mappings``); assert the contract; return the Config or None."""
    cfg, maps = files
    Path(cfg).write_bytes(config)
    sizes = {cfg: _lines(config)}
    if mappings is not None:
        Path(maps).write_bytes(mappings)
        sizes[maps] = _lines(mappings)
    started = time.monotonic()
    with _environment_kept():
        try:
            loaded = load_config(cfg, maps if mappings is not None else None)
        except ConfigError as exc:
            event("ConfigError")
            assert exc.issues, "a ConfigError without issues"
            for issue in exc.issues:
                _located(issue, sizes)
            loaded = None
        else:
            event("valid")
            assert isinstance(loaded, Config)
            for warning in loaded.warnings:
                _located(warning, sizes)
    assert time.monotonic() - started < 5, "one load took longer than 5 s"
    return loaded


# ---------------------------------------------------------------------------
# (a) random text and bytes
# ---------------------------------------------------------------------------

_TOKENS = [
    "model_list", "litellm_params", "model_name", "router_settings", "litellm_settings", "general_settings",
    "environment_variables", "providers", "patterns", "fallback_chains", "chain", "model_info",
    ":", ": ", " ", "  ", "\n", "\r\n", "\t", "- ", "-", "?", "? ", ",", "[", "]", "{", "}", "'", '"', "#", "|", ">",
    "&a ", "*a", "&b ", "*b", "<<: *a", "<<: ", "!!python/object:os.system ", "!!python/object/apply:os.system ",
    "!!python/name:os.system", "!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!binary ", "!!set ", "!!omap ",
    "!!str ", "!custom ", "!!null ", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "---\n", "...\n", "~", "null", ".inf",
    "-.inf", ".nan", "1e400", "9" * 30, "0x1F", "0o17", "2001-12-14t21:59:43.10-05:00", "os.environ/", "os.environ/HOME",
    "openai/", "ollama/", "http://", "http://[::1", "https://h:99999", "\\ud800", "\\0", "\x00", "\x01", "\x85",
    "\u2028", "\ufeff", "é", "日本", "😀", "\ud800",
]
_yamlish = st.lists(st.one_of(st.sampled_from(_TOKENS), st.text(max_size=4)), max_size=40).map("".join)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8 on disk


@st.composite
def _mutated(draw, base: bytes) -> bytes:
    """The shipped file with a few random byte edits: mostly valid YAML, often a semantic error."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(st.sampled_from(_TOKENS).map(_encode), st.binary(min_size=1, max_size=3)))
        if kind == "insert":
            data[pos:pos] = piece
        elif kind == "delete":
            del data[pos:pos + len(piece)]
        else:
            data[pos:pos + len(piece)] = piece
    return bytes(data)


_random_doc = st.one_of(st.binary(max_size=200), _yamlish.map(_encode), st.text(max_size=200).map(_encode))


@FUZZ
@given(doc=_random_doc, which=st.sampled_from(["config", "mappings"]))
# Regressions: each of these used to escape load_config as an unhandled exception.
@example(doc=b"model_list: [\xff]\n", which="config")  # UnicodeDecodeError
@example(doc=b"x: " + b"9" * 5000, which="config")  # ValueError: int() digit limit
@example(doc=b"x: !!int abc\ny: !!timestamp abc\nz: !!bool abc\n", which="config")  # ValueError, AttributeError, KeyError
@example(doc=b"!!int", which="config")  # IndexError
@example(doc=b"x: &a [*a]\n", which="config")  # RecursionError (a list that contains itself)
@example(doc=b"x: " + b"[" * 2000 + b"]" * 2000, which="config")  # RecursionError in PyYAML's composer
@example(doc=b"providers: {p: {type: [1], api_base: 'http://h'}}\n", which="mappings")  # TypeError: unhashable list
@example(doc=b"patterns: [{pattern: 'a{4294967296}'}, {pattern: '" + b"(" * 1500 + b")" * 1500 + b"'}]\n", which="mappings")  # OverflowError, RecursionError
@example(doc=b"x: \x01", which="config")  # a multi-line issue message
# Used to be silently accepted as a plain mapping: a python tag on a collection must be refused.
@example(doc=b"general_settings: !!python/object/apply:os.system {args: [touch /tmp/pwned]}\n", which="config")
@example(doc=b"(!!python: 1\n", which="config")  # not a tag: loads (with an unknown-key warning)
def test_random_documents_never_escape_as_exceptions(files, doc, which):
    if which == "config":
        loaded = check_load(files, doc, SMALL_MAPPINGS)
    else:
        loaded = check_load(files, b"model_list: []\n", doc)
    if _has_python_tag(doc):
        assert loaded is None, "a !!python tag must be refused"


def _has_python_tag(doc: bytes) -> bool:
    """A ``!!python/...`` tag, not just those characters inside a scalar (``(!!python`` is a string)."""
    try:
        return any(isinstance(t, yaml.TagToken) and "python" in "".join(filter(None, t.value)) for t in yaml.scan(doc))
    except yaml.YAMLError:  # not even YAML tokens: it cannot load either
        return True


@settings(FUZZ, max_examples=100)  # each example parses ~9 KB of YAML: ~30 ms
@given(data=st.data(), which=st.sampled_from(["config", "mappings"]))
def test_mutated_shipped_files_never_escape_as_exceptions(files, data, which):
    if which == "config":
        check_load(files, data.draw(_mutated(SHIPPED_CONFIG)), SHIPPED_MAPPINGS)
    else:
        check_load(files, SHIPPED_CONFIG, data.draw(_mutated(SHIPPED_MAPPINGS)))


# ---------------------------------------------------------------------------
# (b) structured documents from the real key vocabulary, with wrong types
# ---------------------------------------------------------------------------

_scalar_junk = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.integers(), st.floats(), st.just(""),
    st.text(max_size=8), st.sampled_from(["os.environ/LLMR_FUZZ_UNSET", "os.environ/LLMR_FUZZ_SET", "\ud800", "x\x00y",
                                          "1" * 400 + ".0", "60", " 7 ", "-3", "12.5"]),
)
_junk = st.recursive(_scalar_junk, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                     max_leaves=6)


def f(*plausible):
    """A key's value: one of the plausible shapes, or anything at all."""
    return st.one_of(*plausible, _junk)


def section(required: dict | None = None, **optional):
    """A mapping with the given (optional) keys, sometimes an unknown key, or junk instead."""
    keys = st.fixed_dictionaries(required or {}, optional=optional)
    extra = st.dictionaries(st.sampled_from(["unknown_key", "drop_params", "tags", "retry_policy", "database_url"]), _junk, max_size=1)
    return st.one_of(st.builds(lambda a, b: {**b, **a}, keys, extra), _junk)


_names = st.sampled_from(["general_chat", "llama3.1:8b", "qwen-coder", "m", "ollama/*", "a*b", "gpt-4o"]) | st.text(max_size=8)
_provider_names = st.sampled_from(["ollama", "vllm", "llama_cpp_python", "llama_cpp_native", "openai", "nope"])
_urls = st.sampled_from(["http://127.0.0.1:11434", "http://localhost:8000/v1/", "https://example.invalid/v1", "http://h:1",
                         "ftp://x", "http://[::1", "http://h:99999", "http://u:p@h", "http://", "os.environ/LLMR_FUZZ_URL",
                         "http://127.0.0.1:8001", "http://[::1]:8080"]) | st.text(max_size=10)
_models = st.sampled_from([f"{p}/{m}" for p in [*PREFIX_KINDS, "bogus", "anthropic"] for m in ["x", "llama3.1:8b", "*", "a/b"]]
                          + ["noslash", "openai/", ""])
_nums = st.one_of(st.integers(0, 1000), st.floats(0, 1e6), st.sampled_from([0, -1, 0.5, float("inf"), float("nan"), 10**400, "30", "1e3"]))
_strategy_names = st.sampled_from([*routing_strategies.STRATEGY_NAMES, "no-such-strategy"])
_str_lists = st.lists(_names, max_size=3)
_fallbacks = st.lists(st.one_of(st.dictionaries(_names, _str_lists, min_size=1, max_size=1),
                                st.fixed_dictionaries({"model": _names, "fallback_models": f(_str_lists)}), _junk), max_size=3)
_regexes = st.sampled_from(["^meta-llama/.*", ".*:\\d+[bB]$", "(", "a{4294967296}", "(?P<x>", "[z-a]", "\\", "*",
                            "(?<=a+)b", "\\p{L}", "(a)(?(1)b|c|d)", "(" * 300 + ")" * 300]) \
    | st.text(alphabet="()[]{}*+?.^$|\\adw0-9:,<>=!P-", max_size=12)
_conditions = st.sampled_from(["always", "ollama_unavailable", "vllm_unavailable", "nope_unavailable", 'model_size >= "13B"',
                               "model_size >>= 13B", "batch_size > 4", "batch_size > x", "stream == true", "stream > true",
                               "context_length < 1000", 'header.x-priority == "high"', "header.x < 3", "bogus == 1", "",
                               'model_size == "1.2.3B"', "header.x == a b"]) | st.text(max_size=10)
_sizes = st.sampled_from(["< 8B", "<= 8B", "8B - 13B", "13B - 8B", "> 13B", ">= 500M", "1.2.3B - 4B", "< x", "", "7B", "> 1e999B"]) \
    | st.text(max_size=8)

_model_entry = section(
    model_name=f(_names),
    litellm_params=section(
        model=f(_models), api_base=f(_urls), api_key=f(st.text(max_size=8)), rpm=f(_nums), tpm=f(_nums),
        weight=f(_nums), order=f(_nums), timeout=f(_nums), stream_timeout=f(_nums), max_tokens=f(_nums),
        max_parallel_requests=f(_nums), temperature=f(_nums)),
    model_info=section(id=f(_names), provider=f(_provider_names), mode=f(st.just("chat"))),
)
_config_doc = section(
    model_list=f(st.lists(_model_entry, max_size=4)),
    router_settings=section(
        routing_strategy=f(_strategy_names), model_group_alias=f(st.dictionaries(
            _names, st.one_of(_names, _str_lists, st.fixed_dictionaries({"model": _names, "hidden": st.booleans()}), _junk), max_size=3)),
        allowed_fails=f(_nums), num_retries=f(_nums), timeout=f(_nums), cooldown_time=f(_nums),
        enable_pre_call_checks=f(st.booleans()), redis_host=f(st.just("127.0.0.1")), redis_port=f(_nums),
        redis_url=f(st.just("redis://127.0.0.1:6379/0")), fallbacks=f(_fallbacks), context_window_fallbacks=f(_fallbacks),
        max_connections_per_backend=f(_nums), monitor_interval=f(_nums), shutdown_grace_period=f(_nums),
        queue_timeout=f(_nums), redis_key_prefix=f(st.text(max_size=5)), debug_router=f(st.booleans())),
    litellm_settings=section(
        request_timeout=f(_nums), num_retries=f(_nums), fallbacks=f(_fallbacks), context_window_fallbacks=f(_fallbacks),
        cache=f(st.booleans()), cache_params=section(type=f(st.sampled_from(["local", "redis", "s3"])), host=f(st.just("h")),
                                                    port=f(_nums), url=f(_urls), ttl=f(_nums), max_bytes=f(_nums),
                                                    max_entry_bytes=f(_nums), namespace=f(st.text(max_size=4)))),
    general_settings=section(
        master_key=f(st.just("sk-master-key-123")), max_request_size_mb=f(_nums), max_json_depth=f(_nums),
        max_messages=f(_nums), max_connections=f(_nums), global_rpm_limit=f(_nums), metrics_require_auth=f(st.booleans()),
        api_keys=f(st.lists(section(name=f(_names), key=f(st.sampled_from(["sk-team-a-0001", "short", "sk-master-key-123"])),
                                    models=f(_str_lists), rpm_limit=f(_nums)), max_size=3))),
    # Names and values the OS accepts: see test_environment_variables_the_os_refuses_are_config_errors.
    environment_variables=st.dictionaries(st.sampled_from(["LLMR_FUZZ_SET", "LLMR_FUZZ_URL", "LLMR_FUZZ_OTHER"]),
                                          st.one_of(st.sampled_from(["http://127.0.0.1:9", "5", "sk-x"]), st.integers(0, 9),
                                                    st.booleans(), st.lists(st.integers(), max_size=1)), max_size=3),
    debug_router=f(st.booleans()),
)

_prov_ref = f(_provider_names)
_mappings_doc = section(
    providers=f(st.dictionaries(_provider_names | st.text(max_size=5), section(
        type=f(st.sampled_from([*WIRE_FORMATS, "bogus"])), kind=f(st.sampled_from([*WIRE_FORMATS])), api_base=f(_urls),
        description=f(st.text(max_size=5))), max_size=4)),
    exact_matches=f(st.dictionaries(_names, section(provider=_prov_ref, priority=f(st.just("primary")), fallback=_prov_ref,
                                                    description=f(st.text(max_size=4))), max_size=3)),
    patterns=f(st.lists(section(pattern=f(_regexes), provider=_prov_ref, fallback=_prov_ref), max_size=3)),
    capabilities=f(st.dictionaries(_names, section(
        description=f(st.text(max_size=4)), preferred_models=f(_str_lists), provider=_prov_ref,
        providers=f(st.lists(_provider_names, max_size=2)), fallback=_prov_ref, min_model_size=f(_sizes, _nums),
        min_context=f(_nums), routing_strategy=f(_strategy_names)), max_size=3)),
    load_balancing=f(st.dictionaries(_strategy_names, section(
        applicable_to=f(_str_lists), weight_factors=f(st.lists(st.dictionaries(st.text(max_size=4), _nums, max_size=2), max_size=2)),
        measure=f(st.just("ttft")), reevaluate_seconds=f(_nums), explore=f(_nums)), max_size=2)),
    redundant_models=f(st.dictionaries(_names, section(providers=f(st.lists(
        section(provider=_prov_ref, weight=f(_nums)), max_size=2))), max_size=2)),
    fallback_chains=f(st.dictionaries(_names, section(
        chain=f(st.lists(st.one_of(*(section(**{rank: _prov_ref, "condition": f(_conditions), "preferred_model": f(_names)})
                                     for rank in ("primary", "secondary", "tertiary", "provider", "bogus"))), max_size=3)),
        retry_attempts=f(_nums), retry_delay_ms=f(_nums), description=f(st.text(max_size=4))), max_size=2)),
    model_size_routing=f(st.lists(section(size=f(_sizes), provider=_prov_ref, fallback=_prov_ref, reason=f(st.text(max_size=4))),
                                  max_size=3)),
    request_metadata_routing=f(st.dictionaries(_names, section(provider=_prov_ref, condition=f(_conditions)), max_size=2)),
    first_request_routing=section(strategy=f(st.sampled_from(["prefer_warm_providers", "none", "fastest"])),
                                  warm_check_timeout_ms=f(_nums)),
    rate_limited_fallback=section(enabled=f(st.booleans()), fallback_duration_seconds=f(_nums)),
    error_based_routing=section(enabled=f(st.booleans()), error_threshold=f(_nums), cooldown_seconds=f(_nums)),
    default_provider=_prov_ref,
)


def _dump(doc) -> bytes:
    # allow_unicode=False: lone surrogates and control characters become YAML escapes ("\uD800"),
    # so they reach the validators as values instead of failing the UTF-8 decoding.
    return yaml.safe_dump(doc, allow_unicode=False, sort_keys=False, width=10**6).encode()


@settings(FUZZ, max_examples=200)
@given(config=_config_doc, mappings=st.one_of(st.none(), _mappings_doc))
# Regressions: each of these used to escape load_config as an unhandled exception.
@example(config={"router_settings": {"max_connections_per_backend": float("inf")}}, mappings=None)  # OverflowError: int(inf)
@example(config={"litellm_settings": {"cache_params": {"max_bytes": 10**400}}}, mappings=None)  # OverflowError: float(10**400)
@example(config={"router_settings": {"timeout": "1" * 5000}}, mappings=None)  # ValueError: int() digit limit
@example(config={"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/x", "api_base": "http://[::1"}}]},
         mappings=None)  # ValueError: Invalid IPv6 URL
@example(config={"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/x", "api_base": "http://h",
                                                                      "api_key": "os.environ/\ud800"}}]},
         mappings=None)  # UnicodeEncodeError looking the variable up
@example(config={"general_settings": {"master_key": "sk-\ud800-master", "api_keys": [{"name": "a", "key": "sk-\ud800-team"}]}},
         mappings=None)  # UnicodeEncodeError comparing keys
@example(config={"model_list": []}, mappings={"providers": {"p": {"type": ["ollama"], "api_base": "http://h"}}})  # TypeError
@example(config={"model_list": []}, mappings={"patterns": [{"pattern": "a{4294967296}", "provider": "p"}]})  # OverflowError
@example(config={}, mappings={"capabilities": {"c": {"min_model_size": 10**400}}})  # OverflowError: float(10**400)
def test_structured_documents_reach_deep_validation_without_exceptions(files, config, mappings):
    os.environ.pop("LLMR_FUZZ_UNSET", None)
    check_load(files, _dump(config), None if mappings is None else _dump(mappings))


# ---------------------------------------------------------------------------
# Named hostile inputs
# ---------------------------------------------------------------------------

_BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" if i else "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
                for i in range(10))  # 10**10 strings once expanded


def test_billion_laughs_is_refused_quickly_and_located(files):
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(*_write(files, _BOMB))
    assert time.monotonic() - started < 2
    (issue,) = info.value.issues
    assert issue.file == files[0] and 1 <= issue.line <= 10 and "alias" in issue.message


def test_merge_keys_are_not_duplicates_and_the_mappings_own_keys_win(files):
    # PyYAML's flatten_mapping put the merged keys in front, so overriding one read as a duplicate key.
    loaded = load_config(*_write(files, "defaults: &d {timeout: 5, num_retries: 2}\nrouter_settings:\n  <<: *d\n  timeout: 6\n"))
    assert loaded.router.timeout == 6 and loaded.router.num_retries == 2
    assert [str(w) for w in loaded.warnings] == [f"{files[0]}:1: defaults: unknown key; ignored"]


def _write(files: tuple[str, str], config: str) -> tuple[str, None]:
    Path(files[0]).write_text(config)
    return files[0], None


@pytest.mark.parametrize("entry", ['"A=B": x', '"": x', 'A: "x\\0y"', 'A: "\\ud800"'])
def test_environment_variables_the_os_refuses_are_config_errors(files, entry):
    with _environment_kept(), pytest.raises(ConfigError) as info:
        load_config(*_write(files, f"model_list: []\nenvironment_variables: {{{entry}}}\n"))
    assert info.value.issues[0].path.startswith("environment_variables")


def test_check_config_cli_refuses_hostile_yaml_with_located_lines_and_no_traceback(files, tmp_path_factory):
    # (The CLI's exit 2 for an ordinary semantic error is in test_config.py.)
    marker = tmp_path_factory.mktemp("cli") / "pwned"
    cfg, _ = _write(files, f"general_settings: !!python/object/apply:os.system [touch {marker}]\n" + _BOMB)
    out = subprocess.run([sys.executable, "-m", "router", "check-config", "--config", cfg], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith(cfg)]
    assert re.match(rf"{re.escape(cfg)}:1: general_settings: unsupported YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'$", lines[0])
    assert re.match(rf"{re.escape(cfg)}:\d+: l\d.*: too many values after expanding aliases", lines[1])
    assert not marker.exists()
