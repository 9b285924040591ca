"""YAML to plain Python values, remembering the line on which every key path starts.

PyYAML's `safe_load` forgets where things came from; validation needs it for its messages
(`upstreams.ml.url (line 12): ...`). So the document is composed into nodes, and the nodes are
turned into dicts, lists and scalars here, with a side table of path -> line.

Aliases are bounded: a node graph with aliases expands to a tree that can grow exponentially
with the size of the text (a "billion laughs": 1.4 KB of YAML took 39.5 s and 2.3 GB to
build). What each alias would add is counted while the document is composed, before anything
is expanded, and a document past MAX_ALIAS_VALUES is refused, naming the alias's line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from abgate.config.errors import ConfigError, Problem

PathPart = str | int
KeyPath = tuple[PathPart, ...]
# Values (scalars, lists, mappings) that aliases may add to a document in all. Generous for
# anchors reused as defaults (a block of 20 settings used by 1,000 upstreams is 21,000).
MAX_ALIAS_VALUES = 100_000
_MERGE = "tag:yaml.org,2002:merge"
_NO_MERGE = "YAML merge keys (<<) are not supported: use extends: or repeat the keys"
MAX_DEPTH = 64  # nesting levels: the deepest setting is about 8; deeper ends in a RecursionError


def render_path(path: KeyPath) -> str:
    """`("routes", 0, "prefix")` -> `routes[0].prefix`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True, slots=True)
class LocatedDocument:
    """A parsed document and the 1-based line of each key path in it."""

    value: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    # Paths written in another file than the one loaded (a base it extends: config/layers.py)
    files: dict[KeyPath, str] = field(default_factory=dict)
    # What the YAML itself refused (a duplicate key, a merge key, an unknown tag): the value
    # is built without it, so validation reports the rest with these.
    problems: tuple[Problem, ...] = ()
    bases: tuple[str, ...] = ()  # the files it extends, nearest first (config/layers.py)

    def line_of(self, path: KeyPath) -> int | None:
        # A missing key has no line of its own: report the nearest enclosing one.
        return self.lines.get(self._nearest(path), None)

    def file_of(self, path: KeyPath) -> str | None:
        """The file `path` was written in when it is not the one loaded, else None."""
        return self.files.get(self._nearest(path))

    def _nearest(self, path: KeyPath) -> KeyPath:
        while path and path not in self.lines:
            path = path[:-1]
        return path


def load_located(text: str, source: str) -> LocatedDocument:
    """Parse one YAML document; a syntax error raises ConfigError (nothing can be read past
    it), a key or value refused is left out and listed in `problems`."""
    try:
        node = yaml.compose(text, Loader=_BoundedLoader)
    except (_AliasBomb, _TooDeep) as exc:
        raise ConfigError(source, [Problem("", exc.line, exc.message)]) from None
    except yaml.MarkedYAMLError as exc:
        # The parser notices a problem where it stops (often the next line); the construct
        # it was reading (an unclosed bracket or quote) starts where the mistake is.
        mark, context = exc.problem_mark, exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = f"invalid YAML: {exc.problem}"
        if context is not None and exc.context and (line is None or context.line + 1 < line):
            message += f" ({exc.context} on line {context.line + 1}, noticed on line {line})"
            line = context.line + 1
        raise ConfigError(source, [Problem("", line, message)]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(source, [Problem("", None, f"invalid YAML: {exc}")]) from exc
    if node is None:
        return LocatedDocument({}, {(): 1})
    builder = _Builder()
    value = builder.build(node, ())
    return LocatedDocument(value, builder.lines, problems=tuple(builder.problems))


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line
        self.message = (
            f"nested deeper than {MAX_DEPTH} levels: no setting is that deep (a parser "
            "would exhaust its stack)"
        )


class _AliasBomb(Exception):
    def __init__(self, line: int, anchor: str) -> None:
        super().__init__(anchor)
        self.line = line
        self.message = (
            f"YAML aliases would expand to more than {MAX_ALIAS_VALUES:,} values (at alias "
            f"*{anchor}): an alias bomb? Refused before expanding it"
        )


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader's composer, counting the values every alias would add: a node's size is
    known once composed (its children are composed first), so an alias costs the size of the
    node it names. Nothing is expanded here; the count stops a bomb before `_Builder` would
    expand it. An alias to an enclosing node (still being composed) counts 1: `_Builder`
    refuses it."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> values it expands to
        self._alias_values = 0
        self._depth = 0  # of the node being composed

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _TooDeep(mark.line + 1 if mark is not None else 0)
            return self._compose_bounded(parent, index)
        finally:
            self._depth -= 1

    def _compose_bounded(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            node = super().compose_node(parent, index)
            self._alias_values += self._sizes.get(id(node), 1)
            if self._alias_values > MAX_ALIAS_VALUES:
                line = event.start_mark.line + 1 if event.start_mark is not None else 0
                raise _AliasBomb(line, str(getattr(event, "anchor", "")))
            return node
        node = super().compose_node(parent, index)
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes.get(id(item), 1) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(
                self._sizes.get(id(key), 1) + self._sizes.get(id(value), 1)
                for key, value in node.value
            )
        else:
            size = 1
        self._sizes[id(node)] = size
        return node


class _Builder:
    def __init__(self) -> None:
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[Problem] = []
        self._scalars = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: KeyPath, inside: frozenset[int] = frozenset()) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in inside:  # an alias to a node that contains it: `&x [*x]`
            self.problems.append(
                Problem(
                    render_path(path),
                    node.start_mark.line + 1,
                    "a YAML alias refers to a node that contains it",
                )
            )
            return None
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            inside = inside | {id(node)}
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:  # `<<: *defaults`
                    self.problems.append(
                        Problem(
                            render_path((*path, "<<")),
                            key_node.start_mark.line + 1,
                            f"invalid YAML: {_NO_MERGE}",
                        )
                    )
                    continue
                if not isinstance(key_node, yaml.ScalarNode):  # `? [a]`: a key that is a list
                    kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                    self.problems.append(
                        Problem(
                            render_path(path),
                            key_node.start_mark.line + 1,
                            f"a key is a {kind}; keys here are names",
                        )
                    )
                    continue
                key = self._scalar(key_node)
                if not isinstance(key, str):
                    key = str(key)
                child = (*path, key)
                if key in out:
                    self.problems.append(
                        Problem(render_path(child), key_node.start_mark.line + 1, "duplicate key")
                    )
                    continue
                self.lines[child] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, child, inside)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [
                self.build(item, (*path, index), inside) for index, item in enumerate(node.value)
            ]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: KeyPath = ()) -> Any:
        try:
            return self._scalars.construct_object(node, deep=True)
        except yaml.YAMLError as exc:  # an unknown or unsafe tag: !foo, !!python/...
            problem = getattr(exc, "problem", None) or str(exc)
        except (ValueError, TypeError, OverflowError) as exc:  # !!int "abc", bad dates
            problem = f"{node.tag} {json.dumps(node.value)}: {exc}"
        if node.tag == _MERGE:  # `<<` as a value
            problem = _NO_MERGE
        self.problems.append(
            Problem(render_path(path), node.start_mark.line + 1, f"invalid YAML value: {problem}")
        )
        return None
