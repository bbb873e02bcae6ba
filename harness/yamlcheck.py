"""Strict reading of a YAML file whose every error names file, line and field.

``ScenarioError`` is one line: ``<file>:<line>: <field path>: <what is wrong and
what to do>``. ``NodeReader`` walks the tree ``yaml.compose`` (SafeLoader)
gives, so every key and value keeps its line: mappings with only known keys
(the closest one suggested), no duplicate or merge keys, typed scalars (``true``
is not a number, ``"10"`` is not an integer) in range. ``harness.scenario``
builds the scenario format on it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from typing import Any, Final, NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

T_STR: Final = "tag:yaml.org,2002:str"
T_INT: Final = "tag:yaml.org,2002:int"
T_FLOAT: Final = "tag:yaml.org,2002:float"
T_BOOL: Final = "tag:yaml.org,2002:bool"
T_NULL: Final = "tag:yaml.org,2002:null"
T_MERGE: Final = "tag:yaml.org,2002:merge"


class ScenarioError(ValueError):
    """A scenario file is unreadable or invalid; ``str()`` is one line."""

    def __init__(self, file: str, line: int, field: str, message: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.message = " ".join(message.split())  # one line, whatever went in
        super().__init__(f"{file}:{line}: {field}: {self.message}")


# --------------------------------------------------------------------------- helpers


def line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


def closest(word: str, known: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def one_of(word: str, known: Sequence[str], what: str) -> str:
    """'unknown fault 'kil'; did you mean 'kill'?' or the list of known ones."""
    hint = closest(word, known)
    if hint is not None:
        return f"unknown {what} {word!r}; did you mean {hint!r}?"
    return f"unknown {what} {word!r}; expected one of: {', '.join(known)}"


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class NodeReader:
    """Walks a composed YAML node tree (every node keeps its line); knows the
    file for error messages. Subclasses add the fields of a format."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._constructor = yaml.SafeLoader("")

    def fail(self, node: Node | None, path: str, message: str) -> NoReturn:
        raise ScenarioError(self.file, line_of(node) if node is not None else 1, path, message)

    # ---- values

    def value(self, node: Node) -> Any:
        """The Python value of a node (SafeLoader semantics)."""
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.fail(node, "yaml", f"cannot read this value: {exc}".splitlines()[0])

    def describe(self, node: Node) -> str:
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        if node.tag == T_NULL:
            return "nothing (null)"
        if node.tag == T_BOOL:
            return f"{node.value} (a boolean)"
        if node.tag == T_STR:
            text = str(node.value)
            return repr(text if len(text) <= 60 else text[:57] + "...")
        return str(node.value)

    def mapping(self, node: Node, path: str, known: Sequence[str],
                required: Sequence[str] = ()) -> dict[str, tuple[Node, Node]]:
        """Key -> (key node, value node); unknown, duplicate and missing keys fail."""
        if not isinstance(node, MappingNode):
            self.fail(node, path or "scenario",
                      f"expected a mapping with keys among {', '.join(known)}, "
                      f"got {self.describe(node)}")
        out = self.raw_mapping(node, path)
        for key, (knode, _) in out.items():
            if key not in known:
                hint = closest(key, known)
                if hint is not None:
                    msg = f"unknown field {key!r}; did you mean {hint!r}?"
                else:
                    msg = f"unknown field {key!r}; known fields: {', '.join(known)}"
                self.fail(knode, join_path(path, key), msg)
        for key in required:
            if key not in out:
                self.fail(node, join_path(path, key), f"missing required field {key!r}")
        return out

    def raw_mapping(self, node: MappingNode, path: str) -> dict[str, tuple[Node, Node]]:
        out: dict[str, tuple[Node, Node]] = {}
        for knode, vnode in node.value:
            if knode.tag == T_MERGE:
                self.fail(knode, path or "scenario",
                          "YAML merge keys ('<<') are not supported; write the fields out")
            if not isinstance(knode, ScalarNode) or knode.tag != T_STR:
                self.fail(knode, path or "scenario",
                          f"keys must be strings, got {self.describe(knode)}")
            key = str(knode.value)
            if key in out:
                self.fail(knode, join_path(path, key),
                          f"duplicate key {key!r} (first at line {line_of(out[key][0])}); "
                          "keep one")
            out[key] = (knode, vnode)
        return out

    def sequence(self, node: Node, path: str, what: str, max_len: int) -> list[Node]:
        if not isinstance(node, SequenceNode):
            self.fail(node, path, f"expected a list of {what}, got {self.describe(node)}")
        if len(node.value) > max_len:
            self.fail(node, path, f"at most {max_len} {what} allowed, got {len(node.value)}")
        return list(node.value)

    def string(self, node: Node, path: str, *, allow_empty: bool = False) -> str:
        if not isinstance(node, ScalarNode) or node.tag != T_STR:
            self.fail(node, path, f"expected a string, got {self.describe(node)}; "
                                  "quote it if it looks like a number or boolean")
        text = str(node.value)
        if not allow_empty and not text.strip():
            self.fail(node, path, "expected a non-empty string")
        return text

    def boolean(self, node: Node, path: str) -> bool:
        if not isinstance(node, ScalarNode) or node.tag != T_BOOL:
            self.fail(node, path, f"expected true or false, got {self.describe(node)}")
        return bool(self.value(node))

    def integer(self, node: Node, path: str, lo: int, hi: int) -> int:
        if not isinstance(node, ScalarNode) or node.tag != T_INT:
            kind = "a positive integer" if lo >= 1 else "an integer"
            self.fail(node, path, f"expected {kind}, got {self.describe(node)}"
                                  f"{self._exponent_hint(node)}")
        value = int(self.value(node))
        if not lo <= value <= hi:
            self.fail(node, path, f"expected an integer in {lo}..{hi}, got {value}")
        return value

    def number(self, node: Node, path: str, lo: float, hi: float, *,
               lo_open: bool = False) -> float:
        if not isinstance(node, ScalarNode) or node.tag not in (T_INT, T_FLOAT):
            self.fail(node, path, f"expected a number, got {self.describe(node)}"
                                  f"{self._exponent_hint(node)}")
        value = float(self.value(node))
        too_low = value <= lo if lo_open else value < lo
        if not math.isfinite(value) or too_low or value > hi:
            rng = f"> {lo:g} and <= {hi:g}" if lo_open else f"in {lo:g}..{hi:g}"
            self.fail(node, path, f"expected a number {rng}, got {node.value}")
        return value

    @staticmethod
    def _exponent_hint(node: Node) -> str:
        """YAML 1.1 reads ``1e9`` as a string; say so instead of puzzling the user."""
        if isinstance(node, ScalarNode) and node.tag == T_STR and node.style is None:
            try:
                float(str(node.value))
            except ValueError:
                return ""
            return "; YAML reads this as text: write the number out, e.g. 1000000"
        return ""
