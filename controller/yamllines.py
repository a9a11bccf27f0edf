"""YAML with line numbers: a SafeLoader whose mappings and sequences
remember the 1-based line of themselves and of each key or item, and which
records duplicate keys instead of silently keeping the last.  What the
topology checker (controller/topology.py) needs to say `FILE:LINE`.

Not here: what the keys mean (controller/topology.py checks them)."""
from typing import Any, Dict, List, Tuple

import yaml


class LineDict(dict):
    """A mapping from YAML that remembers the line of itself and each key."""
    line = 0
    key_lines: Dict[Any, int]


class LineList(list):
    """A sequence from YAML that remembers the line of itself and each item."""
    line = 0
    item_lines: List[int]


_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Loader(_BaseLoader):
    """SafeLoader making LineDicts and LineLists; `problems` collects
    (line, message) of duplicate and unhashable keys."""

    def __init__(self, stream):
        super().__init__(stream)
        self.problems: List[Tuple[int, str]] = []


def _construct_map(loader, node):
    data = LineDict()
    data.line = node.start_mark.line + 1
    data.key_lines = {}
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (dict, list)):
            loader.problems.append((line, "a key must be a plain value, not a "
                                    "mapping or a list"))
            continue
        if key in data.key_lines:
            loader.problems.append((line, f"duplicate key {key!r} (first at "
                                    f"line {data.key_lines[key]})"))
            continue
        data.key_lines[key] = line
        data[key] = loader.construct_object(value_node, deep=True)


def _construct_seq(loader, node):
    data = LineList()
    data.line = node.start_mark.line + 1
    data.item_lines = [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_object(item, deep=True) for item in node.value)


Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def line_of(container, key, default):
    """Line of a key in a mapping (or of an item in a sequence)."""
    if isinstance(container, LineDict):
        return container.key_lines.get(key, container.line)
    if isinstance(container, LineList) and isinstance(key, int) \
            and key < len(container.item_lines):
        return container.item_lines[key]
    return default
