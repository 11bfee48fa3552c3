"""YAML loading that remembers where every key came from.

Configuration errors must read ``file:line: key.path: what is wrong``. PyYAML's
composer keeps a mark on every node, so we compose the document (safe loader only),
turn the node tree into plain Python values ourselves, and record the line of
every key path on the way. Duplicate keys, which PyYAML silently accepts with
the last value winning, are reported as errors. Hostile input is refused with
located issues, never an exception: bytes that are not UTF-8, tags other than
the plain YAML types (``!!python/object`` and friends), nesting deeper than
``MAX_DEPTH``, recursive aliases, and alias "bombs" that would expand past
``MAX_NODES`` values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

MAX_DEPTH = 100  # nested collections; real configuration files use fewer than 10
MAX_NODES = 100_000  # values after expanding aliases, on top of one per character of the file
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def format_path(path: Path) -> str:
    """``("model_list", 0, "litellm_params")`` -> ``model_list[0].litellm_params``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = part if part.isprintable() else repr(part)  # one issue, one line
            out += f".{part}" if out else part
    return out or "(top level)"


@dataclass(frozen=True, slots=True)
class Issue:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}: {self.path}: {self.message}"
        # One line of printable UTF-8 whatever a hostile file put in a key or value.
        return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass
class Source:
    """One loaded YAML file: its data, the line of every key path, and its issues."""

    file: str
    data: Any = None
    lines: dict[Path, int] = field(default_factory=dict)
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    def line(self, path: Path) -> int:
        """The 1-based line of ``path``, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def error(self, path: Path, message: str) -> None:
        self.errors.append(Issue(self.file, self.line(path), format_path(path), message))

    def warn(self, path: Path, message: str) -> None:
        self.warnings.append(Issue(self.file, self.line(path), format_path(path), message))


def load(file: str, raw: bytes | None = None) -> Source:
    """Read and parse ``file`` (or ``raw``, its bytes as read earlier); unreadable files
    and YAML syntax errors become issues."""
    src = Source(file)
    if raw is None:
        try:
            with open(file, "rb") as fh:
                raw = fh.read()
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            src.errors.append(Issue(file, 0, "(file)", f"cannot read: {getattr(exc, 'strerror', None) or exc}"))
            return src
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        src.errors.append(Issue(file, line, "(file)", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"))
        return src
    return parse(text, file)


class _Limit(Exception):
    """A document past ``MAX_DEPTH`` or ``MAX_NODES``, or with a recursive alias."""

    def __init__(self, line: int, path: Path, message: str) -> None:
        self.line, self.path, self.message = line, path, message


class _Loader(yaml.SafeLoader):
    """The safe loader, with a bound on nesting (PyYAML's composer recurses)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _char(c: Any) -> str:
    return f"U+{ord(c):04X}" if isinstance(c, str) and len(c) == 1 else f"0x{c:02x}" if isinstance(c, int) else repr(c)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def parse(text: str, file: str = "<string>") -> Source:
    src = Source(file)
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        src.errors.append(Issue(file, line, "(yaml)", f"YAML syntax error: {_one_line(problem)}"))
        return src
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else 1
        src.errors.append(Issue(file, line, "(yaml)", f"YAML error: character {_char(exc.character)} is not allowed"))
        return src
    except yaml.YAMLError as exc:
        src.errors.append(Issue(file, 1, "(yaml)", f"YAML error: {_one_line(exc)}"))
        return src
    if node is None:
        src.data = {}
        return src
    src.lines[()] = node.start_mark.line + 1
    builder = yaml.SafeLoader("")
    budget = _Budget(MAX_NODES + len(text))
    try:
        src.data = _build(node, (), src, builder, budget)
    except _Limit as exc:
        src.data = None
        src.errors.append(Issue(file, exc.line, format_path(exc.path), exc.message))
    finally:
        builder.dispose()
    return src


class _Budget:
    __slots__ = ("left", "active")

    def __init__(self, left: int) -> None:
        self.left = left
        self.active: set[int] = set()  # ids of the collections being built: an alias to one is a cycle


def _build(node: yaml.Node, path: Path, src: Source, builder: yaml.SafeLoader, budget: _Budget) -> Any:
    budget.left -= 1
    if budget.left < 0:
        raise _Limit(node.start_mark.line + 1, path, "too many values after expanding aliases (an alias bomb?)")
    if isinstance(node, yaml.ScalarNode):
        try:
            return builder.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            src.errors.append(Issue(src.file, node.start_mark.line + 1, format_path(path), f"YAML error: {_one_line(exc.problem or exc.context)}"))
        except Exception:  # PyYAML's constructors trust the scanner: "!!int abc", "!!int", "!!timestamp x", 5000 digits
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            src.errors.append(Issue(src.file, node.start_mark.line + 1, format_path(path), f"not a valid {tag} value: {node.value[:60]!r}"))
        return None
    if node.tag not in (_MAP_TAG, _SEQ_TAG):  # "!!python/object:...", "!!set", "!custom": no constructor runs
        src.errors.append(Issue(src.file, node.start_mark.line + 1, format_path(path), f"unsupported YAML tag {node.tag!r}"))
        return None
    if id(node) in budget.active:
        raise _Limit(node.start_mark.line + 1, path, "recursive alias (a collection that contains itself)")
    budget.active.add(id(node))
    try:
        return _build_mapping(node, path, src, builder, budget) if isinstance(node, yaml.MappingNode) else \
            _build_sequence(node, path, src, builder, budget)
    finally:
        budget.active.discard(id(node))


def _build_sequence(node: yaml.SequenceNode, path: Path, src: Source, builder: yaml.SafeLoader, budget: _Budget) -> list[Any]:
    items = []
    for i, item in enumerate(node.value):
        child = path + (i,)
        src.lines[child] = item.start_mark.line + 1
        items.append(_build(item, child, src, builder, budget))
    return items


def _build_mapping(node: yaml.MappingNode, path: Path, src: Source, builder: yaml.SafeLoader, budget: _Budget) -> dict[str, Any]:
    out: dict[str, Any] = {}
    merged: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:  # "<<: *defaults" or "<<: [*a, *b]": the mapping's own keys win, then earlier sources
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    src.errors.append(Issue(src.file, source.start_mark.line + 1, format_path(path), "a merge key (<<) takes a mapping or a list of mappings"))
                    continue
                built = _build(source, path, src, builder, budget)
                if isinstance(built, dict):
                    for k, v in built.items():
                        merged.setdefault(k, v)
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            src.errors.append(Issue(src.file, key_node.start_mark.line + 1, format_path(path), "mapping keys must be plain scalars"))
            continue
        n = len(src.errors)
        key = _build(key_node, path, src, builder, budget)
        if len(src.errors) > n:
            continue
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            src.errors.append(Issue(src.file, key_node.start_mark.line + 1, format_path(path), "mapping keys must be plain scalars"))
            continue
        key = str(key) if not isinstance(key, str) else key
        child = path + (key,)
        src.lines[child] = key_node.start_mark.line + 1
        if key in out:
            src.error(child, "duplicate key (YAML would silently keep only the last one)")
        out[key] = _build(value_node, child, src, builder, budget)
    if merged:
        out = {**merged, **out}
    return out
