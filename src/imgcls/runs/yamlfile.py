"""YAML files read safely: config files and the run folder's config.yaml. No Python tags (yaml's safe loader),
and bounded, so that a small hostile file cannot take the memory or time an alias bomb or deep nesting would."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from imgcls.errors import SHOWN_LENGTH, UserError

MAX_YAML_BYTES = 1_000_000  # a config is about a kilobyte
MAX_YAML_NODES = 10_000  # values once every alias is copied out; a config holds about 40
MAX_YAML_DEPTH = 50  # a config nests 2 or 3 levels
MAX_YAML_INT_DIGITS = 100  # far beyond any setting; Python refuses to read ints of more than 4300 digits


class YamlRefused(Exception):
    """A YAML document too large to read safely; the message says what is too large."""


def read_yaml(path: Path, name: str, fix: str) -> Any:
    """The one document of a YAML file, read safely; every problem is a UserError '<name> ...; <fix>'."""
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise YamlRefused(f"is larger than {MAX_YAML_BYTES // 1000} kB")
        return yaml.load(path.read_text(), Loader=BoundedLoader)
    except UnicodeDecodeError:
        raise UserError(f"{name} is not a text file; {fix}") from None
    except OSError as error:
        raise UserError(f"cannot read {name} ({error.strerror or error}); {fix}") from None
    except YamlRefused as error:
        raise UserError(f"{name} {error}; {fix}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{name} is not valid YAML{where}; {fix}") from None
    except ValueError as error:  # a value yaml cannot build, such as the date 2024-13-45
        raise UserError(f"{name} holds a value that cannot be read ({str(error)[:SHOWN_LENGTH]}); {fix}") from None


class BoundedLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a document past the MAX_YAML_* bounds."""

    depth = 0

    def compose_node(self, parent, index):
        # composing is recursive: without a bound, deep nesting ends in a RecursionError
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise YamlRefused(f"nests deeper than {MAX_YAML_DEPTH} levels (line {line})")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_document(self, node):
        size = _expanded_size(node)
        if size == math.inf:
            raise YamlRefused("has an alias inside the very collection it names (a value that holds itself)")
        if size > MAX_YAML_NODES:
            raise YamlRefused(f"has aliases that expand to more than {MAX_YAML_NODES:,} values")
        return super().construct_document(node)

    def construct_yaml_int(self, node):
        if len(node.value) > MAX_YAML_INT_DIGITS:
            raise YamlRefused(f"holds a number of {len(node.value)} digits at line {node.start_mark.line + 1}")
        return super().construct_yaml_int(node)


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)


def _expanded_size(root) -> float:
    """How many nodes a composed document has once every alias is copied out (nine aliases to a list of nine
    aliases... are 9^n values), infinite when a collection holds itself; counted without recursion."""
    def children(node) -> list:
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return list(node.value) if isinstance(node, yaml.SequenceNode) else []

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the path from the root: meeting one again is a cycle
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children(node))
        elif id(node) in open_nodes:
            return math.inf
        elif id(node) not in sizes:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children(node))
    return sizes[id(root)]
