"""YAML loading that remembers where every key came from.

Configuration errors must read ``file:line: key.path: what is wrong``. PyYAML's
composer keeps a mark on every node, so we compose the document (safe loader only),
turn the node tree into plain Python values ourselves, and record the line of
every key path on the way. Duplicate keys, which PyYAML silently accepts with
the last value winning, are reported as errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """``("model_list", 0, "litellm_params")`` -> ``model_list[0].litellm_params``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


@dataclass(frozen=True, slots=True)
class Issue:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}: {self.message}"


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


def load(file: str) -> Source:
    """Read and parse ``file``; unreadable files and YAML syntax errors become issues."""
    src = Source(file)
    try:
        with open(file, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        src.errors.append(Issue(file, 0, "(file)", f"cannot read: {exc.strerror or exc}"))
        return src
    return parse(text, file)


def parse(text: str, file: str = "<string>") -> Source:
    src = Source(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        src.errors.append(Issue(file, line, "(yaml)", f"YAML syntax error: {problem}"))
        return src
    except yaml.YAMLError as exc:
        src.errors.append(Issue(file, 1, "(yaml)", f"YAML error: {exc}"))
        return src
    if node is None:
        src.data = {}
        return src
    src.lines[()] = node.start_mark.line + 1
    builder = yaml.SafeLoader("")
    try:
        src.data = _build(node, (), src, builder)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        src.errors.append(Issue(file, mark.line + 1 if mark else 1, "(yaml)", f"YAML error: {exc}"))
    finally:
        builder.dispose()
    return src


def _build(node: yaml.Node, path: Path, src: Source, builder: yaml.SafeLoader) -> Any:
    if isinstance(node, yaml.MappingNode):
        builder.flatten_mapping(node)  # resolves YAML merge keys ("<<")
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = builder.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                src.errors.append(Issue(src.file, key_node.start_mark.line + 1, format_path(path), "mapping keys must be plain scalars"))
                continue
            key = str(key) if not isinstance(key, str) else key
            child = path + (key,)
            src.lines[child] = key_node.start_mark.line + 1
            if key in out:
                src.error(child, "duplicate key (YAML would silently keep only the last one)")
            out[key] = _build(value_node, child, src, builder)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            child = path + (i,)
            src.lines[child] = item.start_mark.line + 1
            items.append(_build(item, child, src, builder))
        return items
    return builder.construct_object(node, deep=True)
