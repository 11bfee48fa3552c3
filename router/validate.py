"""Request bodies checked against the OpenAI shapes we accept, before routing.

``parse_body`` decodes a chat, completions or embeddings body and rejects what no
backend should see: wrong types, out-of-range sampling parameters, batches and
conversations past the caps. Every rejection is a ``BadRequest`` (HTTP 400,
``invalid_request_error``) whose ``param`` names the field, as OpenAI does.
Fields we do not know pass through untouched and in their order: the dict is
re-encoded for the backend as it is.

It runs on every request, so it is plain ``type()`` checks over the fields that
are present (``null`` counts as absent for every optional field, as OpenAI
treats it), no schema library.

Limits, and where they come from:

* ``n`` 1..128, ``top_logprobs`` 0..20, ``stop`` at most 4 strings,
  ``temperature`` 0..2, ``top_p`` 0..1, penalties -2..2: OpenAI's own.
* ``max_tokens``/``max_completion_tokens`` >= 1 for chat (OpenAI and vLLM both
  reject 0); a legacy completion may ask for ``max_tokens: 0`` (with ``echo`` it
  scores a prompt without generating, as lm-evaluation-harness does on vLLM).
* ``dimensions`` at most 65536, wider than any embedding model.
* ``max_messages`` messages and ``max_items`` prompts/inputs per request
  (defaults 4096 each); a prompt given as token ids is one prompt however long
  (the body size limit bounds it).
"""

from __future__ import annotations

from typing import Any

import orjson

from router.errors import BadRequest
from router.routing.resolve import MAX_MODEL_NAME

MAX_MESSAGES = 4096
MAX_ITEMS = 4096
MAX_N = 128
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
MAX_DIMENSIONS = 65536  # wider than any embedding model; a backend that honours it blindly allocates that much
ENCODING_FORMATS = ("float", "base64")

_NUMBER = (int, float)


def parse_body(endpoint: str, raw: bytes, model_optional: bool = False, *,
               max_messages: int = MAX_MESSAGES, max_items: int = MAX_ITEMS) -> dict[str, Any]:
    """Decode and check the OpenAI request shapes we accept; unknown fields stay.
    ``model_optional``: the request names a capability instead (``X-Capability``)."""
    body = decode_object(raw)
    validate(endpoint, body, model_optional, max_messages=max_messages, max_items=max_items)
    return body


def decode_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (every endpoint's and front door's but
    Ollama's, which words it as Ollama does)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from None
    if type(body) is not dict:
        raise BadRequest("The request body must be a JSON object.")
    return body


def validate(endpoint: str, body: dict[str, Any], model_optional: bool = False, *,
             max_messages: int = MAX_MESSAGES, max_items: int = MAX_ITEMS) -> None:
    """Check a decoded body in place (only a missing/empty optional ``model`` is removed)."""
    model = body.get("model")
    if model is None or model == "":
        if not model_optional:
            raise BadRequest("You must provide a model parameter (or an X-Capability header).", param="model")
        body.pop("model", None)
    elif type(model) is not str:
        raise BadRequest("model must be a string.", param="model")
    elif len(model) > MAX_MODEL_NAME:
        raise BadRequest(f"model must be at most {MAX_MODEL_NAME} characters.", param="model")
    elif not model.isprintable():
        raise BadRequest("model must not contain control characters.", param="model")

    if endpoint == "chat":
        _messages(body.get("messages"), max_messages)
    elif endpoint == "completions":
        prompt = body.get("prompt")
        if prompt is None:
            raise BadRequest("prompt is required: a string, an array of strings, or token ids.", param="prompt")
        _prompts(prompt, "prompt", max_items, allow_empty_string=True)
    elif endpoint == "embeddings":
        value = body.get("input")
        if value is None:
            raise BadRequest("input is required: a non-empty string, an array of strings, or token ids.", param="input")
        _prompts(value, "input", max_items, allow_empty_string=False)
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        raise BadRequest("stream must be a boolean.", param="stream")
    _string(body, "user")

    if endpoint == "chat":
        _sampling(body, least_tokens=1)
        _bool(body, "logprobs")
        _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
        _tools(body)
        _response_format(body.get("response_format"))
    elif endpoint == "completions":
        _sampling(body, least_tokens=0)
        _int(body, "logprobs", 0, None)
        _int(body, "best_of", 1, MAX_N)
        _bool(body, "echo")
        _string(body, "suffix")
    elif endpoint == "embeddings":
        fmt = body.get("encoding_format")
        if fmt is not None and fmt not in ENCODING_FORMATS:
            raise BadRequest("encoding_format must be 'float' or 'base64'.", param="encoding_format")
        _int(body, "dimensions", 1, MAX_DIMENSIONS)


# -- fields ---------------------------------------------------------------------------------


def _sampling(body: dict[str, Any], least_tokens: int) -> None:
    """What chat and completions share."""
    _int(body, "max_tokens", least_tokens, None)
    _int(body, "max_completion_tokens", 1, None)
    _int(body, "n", 1, MAX_N)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _int(body, "seed", None, None)
    _object(body, "stream_options")
    _object(body, "logit_bias")
    stop = body.get("stop")
    if stop is not None and type(stop) is not str:
        if type(stop) is not list or len(stop) > MAX_STOP or any(type(s) is not str for s in stop):
            raise BadRequest(f"stop must be a string or an array of at most {MAX_STOP} strings.", param="stop")


def _messages(messages: Any, cap: int) -> None:
    if type(messages) is not list or not messages:
        raise BadRequest("messages is required and must be a non-empty array.", param="messages")
    if len(messages) > cap:
        raise BadRequest(f"messages must have at most {cap} entries.", param="messages")
    parts = 0  # content parts over all messages: at most ``cap`` too (a body of a million tiny parts is not a chat)
    for i, m in enumerate(messages):
        if type(m) is not dict or type(m.get("role")) is not str:
            raise BadRequest(f"messages[{i}] must be an object with a string role.", param=f"messages[{i}]")
        content = m.get("content")
        if content is not None and type(content) is not str:
            if type(content) is not list:
                raise BadRequest(f"messages[{i}].content must be a string, an array of content parts, or null.",
                                 param=f"messages[{i}].content")
            parts += len(content)
            if parts > cap:
                raise BadRequest(f"messages may hold at most {cap} content parts in all.", param=f"messages[{i}].content")
            for j, part in enumerate(content):
                _content_part(part, f"messages[{i}].content[{j}]")
        name = m.get("name")
        if name is not None and type(name) is not str:
            raise BadRequest(f"messages[{i}].name must be a string.", param=f"messages[{i}].name")
        calls = m.get("tool_calls")
        if calls is not None:
            if type(calls) is not list:
                raise BadRequest(f"messages[{i}].tool_calls must be an array.", param=f"messages[{i}].tool_calls")
            for j, call in enumerate(calls):
                if type(call) is not dict or type(call.get("function", {})) is not dict:
                    raise BadRequest(f"messages[{i}].tool_calls[{j}] must be an object whose function is an object.",
                                     param=f"messages[{i}].tool_calls[{j}]")


def _content_part(part: Any, where: str) -> None:
    if type(part) is not dict or type(part.get("type")) is not str:
        raise BadRequest(f"{where} must be an object with a string type.", param=where)
    kind = part["type"]
    if kind == "text":
        if type(part.get("text")) is not str:
            raise BadRequest(f"{where}.text must be a string.", param=f"{where}.text")
    elif kind == "image_url":
        image = part.get("image_url")
        if type(image) is dict:
            image = image.get("url")
        if type(image) is not str:
            raise BadRequest(f"{where}.image_url must be an object with a string url.", param=f"{where}.image_url")


def _tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if type(tools) is not list:
            raise BadRequest("tools must be an array of objects.", param="tools")
        for i, tool in enumerate(tools):
            if type(tool) is not dict or type(tool.get("function", {})) is not dict:
                raise BadRequest(f"tools[{i}] must be an object whose function is an object.", param=f"tools[{i}]")
    choice = body.get("tool_choice")
    if choice is not None and type(choice) is not str and type(choice) is not dict:
        raise BadRequest("tool_choice must be a string or an object.", param="tool_choice")


def _response_format(fmt: Any) -> None:
    if fmt is None:
        return
    if type(fmt) is not dict or type(fmt.get("type")) is not str:
        raise BadRequest("response_format must be an object with a string type.", param="response_format")
    schema = fmt.get("json_schema")
    if schema is not None and type(schema) is not dict:
        raise BadRequest("response_format.json_schema must be an object.", param="response_format.json_schema")


def _prompts(value: Any, param: str, cap: int, allow_empty_string: bool) -> None:
    """A string, an array of strings, an array of token ids (one prompt), or an array of
    arrays of token ids; never an empty array, and at most ``cap`` prompts."""
    kind = type(value)
    if kind is str:
        if not value and not allow_empty_string:
            raise BadRequest(f"{param} must not be empty.", param=param)
        return
    if kind is not list or not value:
        raise BadRequest(f"{param} must be a string, a non-empty array of strings, or token ids.", param=param)
    first = type(value[0])
    if first is int:
        if not _token_ids(value):
            raise BadRequest(f"{param} as token ids must be an array of non-negative integers.", param=param)
        return
    if len(value) > cap:
        raise BadRequest(f"{param} must have at most {cap} entries.", param=param)
    if first is str:
        for i, item in enumerate(value):
            if type(item) is not str:
                raise BadRequest(f"{param}[{i}] must be a string like the first entry.", param=f"{param}[{i}]")
        return
    if first is list:
        for i, item in enumerate(value):
            if type(item) is not list or not item or not _token_ids(item):
                raise BadRequest(f"{param}[{i}] must be a non-empty array of non-negative integer token ids.",
                                 param=f"{param}[{i}]")
        return
    raise BadRequest(f"{param} must be a string, an array of strings, or token ids.", param=param)


def _token_ids(items: list[Any]) -> bool:
    """Non-negative ints only (bools are not ints here). C-level passes: a prompt of
    millions of token ids is checked in a fraction of the time orjson took to read it."""
    return set(map(type, items)) == {int} and min(items) >= 0


# -- scalars --------------------------------------------------------------------------------


def _int(body: dict[str, Any], key: str, least: int | None, most: int | None) -> None:
    value = body.get(key)
    if value is None:
        return
    if type(value) is not int or (least is not None and value < least) or (most is not None and value > most):
        if least is not None and most is not None:
            what = f"an integer from {least} to {most}"
        elif least is not None:
            what = f"an integer >= {least}"
        else:
            what = "an integer"
        raise BadRequest(f"{key} must be {what}.", param=key)


def _number(body: dict[str, Any], key: str, least: float, most: float) -> None:
    value = body.get(key)
    if value is None:
        return
    if type(value) not in _NUMBER or not least <= value <= most:
        raise BadRequest(f"{key} must be a number from {least} to {most}.", param=key)


def _bool(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if value is not None and type(value) is not bool:
        raise BadRequest(f"{key} must be a boolean.", param=key)


def _string(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if value is not None and type(value) is not str:
        raise BadRequest(f"{key} must be a string.", param=key)


def _object(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if value is not None and type(value) is not dict:
        raise BadRequest(f"{key} must be an object.", param=key)
