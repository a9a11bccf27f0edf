"""Config of the NFs that take parameters rather than rules (lb, nat,
ratelimit, ddos): checked key by key against declared defaults and types,
unknown keys rejected, every error reported, each naming where it is.

A config comes inline in the plan (a dict: errors say `<lb config>: key:
message`) or from a YAML file named by its `file` key (errors say
`FILE:LINE: key: message`, the line of the offending value).  This module
checks and returns plain values; it does not build NFs.
"""
import ipaddress

import yaml

from contracts.validate import Errors, check_mac
from nflib.api import NFConfigError


class _Where:
    """Maps a key path to a `FILE:LINE` (file configs) or a name (inline)."""

    def __init__(self, source, lines=None):
        self.source, self.lines = source, lines or {}

    def __call__(self, path):
        line = self.lines.get(tuple(path))
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path)
        key = key.replace(".[", "[")
        where = f"{self.source}:{line}" if line else self.source
        return f"{where}: {key}" if key else where


def _plain(node, path, lines):
    """A YAML node as plain Python values, noting each value's line."""
    lines[tuple(path)] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for k, v in node.value:
            key = yaml.safe_load(yaml.serialize(k))
            out[key] = _plain(v, path + [key], lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(v, path + [i], lines) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def read(nf, config):
    """(values, where) of an NF config: the inline dict, or the YAML file
    named by config["file"] (other inline keys are not allowed with it)."""
    config = dict(config or {})
    if "file" not in config:
        return config, _Where(f"<{nf} config>")
    path = config.pop("file")
    if config:
        raise NFConfigError(f"<{nf} config>: 'file' excludes other keys, got {sorted(config)}")
    try:
        with open(path) as f:
            node = yaml.compose(f)
    except OSError as err:
        raise NFConfigError(f"{path}: cannot read {nf} config: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise NFConfigError(f"{path}{line}: not valid YAML: {getattr(err, 'problem', err)}") from None
    lines = {}
    values = _plain(node, [], lines) if node is not None else {}
    if not isinstance(values, dict):
        raise NFConfigError(f"{path}:1: a {nf} config is a mapping of keys to values")
    return values, _Where(path, lines)


def collector():
    """A contracts.validate.Errors whose raise_if_any() raises one
    NFConfigError with every error, one a line."""
    return Errors(lambda errors: NFConfigError("\n".join(errors)))


class Checker:
    """Collects every error of one config; `done()` raises them at once."""

    def __init__(self, nf, config):
        self.values, self.where = read(nf, config)
        self.errors = collector()

    def error(self, path, message):
        self.errors.add(self.where(path), message)

    def take(self, spec, values=None, path=()):
        """Checked values of a mapping: spec = {key: (default, check)};
        `check(value) -> value` raises ValueError with a message."""
        values = self.values if values is None else values
        out = {}
        for key in values:
            if key not in spec:
                self.error(list(path) + [key], f"unknown key; known: {', '.join(sorted(spec)) or 'none'}")
        for key, (default, check) in spec.items():
            if key not in values:
                if default is REQUIRED:
                    self.error(list(path), f"missing key {key!r}")
                out[key] = None if default is REQUIRED else default
                continue
            try:
                out[key] = check(values[key])
            except (ValueError, TypeError) as err:
                self.error(list(path) + [key], str(err))
                out[key] = None if default is REQUIRED else default
        return out

    def done(self):
        self.errors.raise_if_any()


REQUIRED = object()


def positive(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"must be a positive number, got {value!r}")
    return value


def positive_int(value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return value


def ipv4(value):
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise ValueError(f"must be an IPv4 address, got {value!r}") from None


def ipv6(value):
    try:
        return str(ipaddress.IPv6Address(value))
    except (ValueError, TypeError):
        raise ValueError(f"must be an IPv6 address, got {value!r}") from None


def ipv4_net(value):
    try:
        return str(ipaddress.IPv4Network(value, strict=False))
    except (ValueError, TypeError):
        raise ValueError(f"must be an IPv4 network like 10.0.0.0/8, got {value!r}") from None


def mac(value):
    """The MAC as 6 bytes (contracts.validate.check_mac, the one MAC check)."""
    return check_mac(value)


def boolean(value):
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value
