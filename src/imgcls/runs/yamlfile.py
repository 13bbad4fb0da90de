"""YAML files read safely: config files and the run folder's config.yaml. No Python tags (yaml's safe loader),
and bounded, so that a small hostile file cannot take the memory or time an alias bomb or deep nesting would."""

from __future__ import annotations

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
    """yaml's safe loader, refusing a document past the MAX_YAML_* bounds as it composes it."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth, self.sizes = 0, {}  # sizes: node id -> its values once every alias is copied out

    def compose_node(self, parent, index):
        # composing is recursive: without a bound, deep nesting ends in a RecursionError
        if self.depth >= MAX_YAML_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise YamlRefused(f"nests deeper than {MAX_YAML_DEPTH} levels (line {line})")
        alias = self.check_event(yaml.AliasEvent)
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if alias and id(node) not in self.sizes:  # the alias names a collection still being composed
            raise YamlRefused("has an alias inside the very collection it names (a value that holds itself)")
        if not alias:  # nine aliases to a list of nine aliases... are 9^n values
            children = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else \
                node.value if isinstance(node, yaml.SequenceNode) else []
            self.sizes[id(node)] = 1 + sum(self.sizes[id(child)] for child in children)
        if self.sizes[id(node)] > MAX_YAML_NODES:
            raise YamlRefused(f"has aliases that expand to more than {MAX_YAML_NODES:,} values")
        return node

    def construct_yaml_int(self, node):
        if len(node.value) > MAX_YAML_INT_DIGITS:
            raise YamlRefused(f"holds a number of {len(node.value)} digits at line {node.start_mark.line + 1}")
        return super().construct_yaml_int(node)


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)
