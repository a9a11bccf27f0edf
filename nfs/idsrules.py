"""The IDS's rule language: a subset of Snort/Suricata rules, read and
checked.  One rule a line, `#` comments:

    alert tcp any any -> 10.0.1.0/24 80 (msg:"admin probe"; content:"GET /admin"; nocase; sid:1001; rev:1;)
    drop  tcp any any <> any any (msg:"shellcode"; content:"|90 90 90 90|"; pcre:"/bin\\/(ba)?sh/i"; sid:1002;)

action `alert` or `drop`; proto `tcp`, `udp`, `icmp` or `ip`; addresses
`any`, an IPv4 address or network; ports `any`, `N`, `N:M`, `N:` or `:M`
(tcp and udp only); direction `->` or `<>` (either way).  Options: `msg`,
`content` (with `|hex|` bytes; `nocase` after it), `pcre:"/RE/FLAGS"`
(flags i, s, m), `sid` (required, unique), `rev` and `classtype` (kept).
A rule fires when every one of its contents and pcres is found in the
packet's payload and its header matches.  Anything else (variables like
$HOME_NET, lists, negation, other options) is an error that names the
line, never silently ignored.
"""
import dataclasses
import ipaddress
import re

from contracts.validate import already_used
from nflib.api import rule_text
from nfs.nfconfig import collector

PROTOS = {"ip": 0, "icmp": 1, "tcp": 6, "udp": 17}
KEPT_OPTIONS = ("rev", "classtype")


@dataclasses.dataclass
class Pattern:
    regex: str          # for Hyperscan
    caseless: bool = False
    dotall: bool = False
    multiline: bool = False


@dataclasses.dataclass
class Rule:
    action: str
    proto: int
    src: object          # IPv4Network or None
    sport: tuple
    dst: object
    dport: tuple
    bidir: bool
    sid: int = 0
    msg: str = ""
    patterns: list = dataclasses.field(default_factory=list)
    line: int = 0
    text: str = ""


class RuleError(ValueError):
    pass


def _net(word, what):
    if word == "any":
        return None
    if word.startswith("$"):
        raise RuleError(f"variables like {word} are not supported; write the {what} network")
    if word.startswith(("[", "!")):
        raise RuleError(f"address lists and negation ({word}) are not supported")
    try:
        return ipaddress.IPv4Network(word, strict=False)
    except ValueError:
        raise RuleError(f"{what} address {word!r} is not any, an IPv4 address or network") from None


def _ports(word, what):
    if word == "any":
        return (0, 65535)
    if word.startswith(("$", "[", "!")):
        raise RuleError(f"{what} port {word!r}: variables, lists and negation are not supported")
    m = re.fullmatch(r"(\d*)(:?)(\d*)", word)
    if not m or not (m.group(1) or m.group(3)) or (m.group(3) and not m.group(2)):
        raise RuleError(f"{what} port {word!r} is not any, N, N:M, N: or :M")
    lo = int(m.group(1) or 0)
    hi = int(m.group(3) or (65535 if m.group(2) else lo))
    if not 0 <= lo <= hi <= 65535:
        raise RuleError(f"{what} port range {word!r} must be within 0-65535, low to high")
    return (lo, hi)


def _split_options(body):
    """`key:value; key; ...` -> [(key, value or None)], quotes respected."""
    out, cur, quoted, i = [], "", False, 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and quoted and i + 1 < len(body):
            cur += body[i:i + 2]
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    if quoted:
        raise RuleError("unterminated quoted string in the options")
    if cur.strip():
        raise RuleError(f"option {cur.strip()!r} must end with ';'")
    pairs = []
    for opt in out:
        if not opt:
            continue
        key, sep, value = opt.partition(":")
        pairs.append((key.strip(), value.strip() if sep else None))
    return pairs


def _quoted(value, key):
    if value is None or len(value) < 2 or value[0] != '"' or value[-1] != '"':
        raise RuleError(f"{key} takes a quoted string, like {key}:\"...\"")
    return value[1:-1]


def _unescape(text, key):
    """Backslash escapes \\" \\\\ \\; \\: of a quoted rule string."""
    out, i = "", 0
    while i < len(text):
        if text[i] == "\\":
            if i + 1 >= len(text) or text[i + 1] not in '"\\;:|':
                raise RuleError(f"{key}: unknown escape \\{text[i + 1:i + 2]} (use \\\", \\\\, \\;, \\:, \\|)")
            out += text[i + 1]
            i += 2
        else:
            out += text[i]
            i += 1
    return out


def content_bytes(text):
    """A content string with |hex| parts as bytes."""
    out, parts = b"", re.split(r"(?<!\\)\|", text)
    if len(parts) % 2 == 0:
        raise RuleError("content has an unclosed |hex| part")
    for i, part in enumerate(parts):
        if i % 2:
            digits = part.split()
            if not digits or not all(re.fullmatch(r"[0-9A-Fa-f]{2}", d) for d in digits):
                raise RuleError(f"content |{part}|: hex bytes are pairs of hex digits separated by spaces")
            out += bytes(int(d, 16) for d in digits)
        else:
            out += _unescape(part, "content").encode("latin-1")
    if not out:
        raise RuleError("content is empty")
    return out


def _pcre(value):
    text = _quoted(value, "pcre")
    if not text.startswith("/") or text.rfind("/") == 0:
        raise RuleError('pcre takes "/REGEX/FLAGS"')
    end = text.rfind("/")
    regex, flags = text[1:end], text[end + 1:]
    bad = set(flags) - set("ism")
    if bad:
        raise RuleError(f"pcre flags {''.join(sorted(bad))!r} are not supported (only i, s, m)")
    if not regex:
        raise RuleError("pcre is empty")
    return Pattern(regex, "i" in flags, "s" in flags, "m" in flags)


HEADER = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*\((.*)\)\s*$")


def parse_rule(line, lineno):
    m = HEADER.match(line)
    if not m:
        raise RuleError("expected 'ACTION PROTO SRC SPORT -> DST DPORT (OPTIONS)'")
    action, proto, src, sport, direction, dst, dport, body = m.groups()
    if action not in ("alert", "drop"):
        raise RuleError(f"action must be alert or drop, not {action!r}")
    if proto not in PROTOS:
        raise RuleError(f"protocol must be one of {', '.join(PROTOS)}, not {proto!r}")
    if direction not in ("->", "<>"):
        raise RuleError(f"direction must be -> or <>, not {direction!r}")
    if PROTOS[proto] not in (6, 17) and (sport, dport) != ("any", "any"):
        raise RuleError(f"ports need tcp or udp, not {proto}")
    rule = Rule(action, PROTOS[proto], _net(src, "source"), _ports(sport, "source"),
                _net(dst, "destination"), _ports(dport, "destination"),
                direction == "<>", line=lineno, text=line)
    _options(rule, _split_options(body))
    return rule


def _options(rule, pairs):
    last_content = None
    for key, value in pairs:
        if key == "msg":
            rule.msg = _unescape(_quoted(value, "msg"), "msg")
        elif key == "content":
            raw = content_bytes(_quoted(value, "content"))
            last_content = Pattern("".join(f"\\x{b:02x}" for b in raw))
            rule.patterns.append(last_content)
        elif key == "nocase":
            if value is not None:
                raise RuleError("nocase takes no value")
            if last_content is None:
                raise RuleError("nocase must follow a content")
            last_content.caseless = True
        elif key == "pcre":
            rule.patterns.append(_pcre(value))
            last_content = None
        elif key == "sid":
            if value is None or not value.isdigit() or int(value) == 0:
                raise RuleError(f"sid must be a positive number, got {value!r}")
            rule.sid = int(value)
        elif key in KEPT_OPTIONS:
            continue
        else:
            raise RuleError(f"option {key!r} is not supported; supported: msg, content, "
                            f"nocase, pcre, sid, {', '.join(KEPT_OPTIONS)}")
    if not rule.sid:
        raise RuleError("every rule needs a sid")
    if not rule.patterns:
        raise RuleError("a rule needs at least one content or pcre")


def parse_rules(text, source="<rules>"):
    """[Rule]; raises NFConfigError listing every error as FILE:LINE: message."""
    rules, errors, sids = [], collector(), {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rule = parse_rule(line, lineno)
        except RuleError as err:
            errors.add(f"{source}:{lineno}", str(err))
            continue
        if rule.sid in sids:
            errors.add(f"{source}:{lineno}", already_used(f"sid {rule.sid}", "another rule",
                                                          sids[rule.sid]))
            continue
        sids[rule.sid] = lineno
        rules.append(rule)
    if not rules and not errors:
        errors.add(source, "no rules")
    errors.raise_if_any()
    return rules


def load_rules(config):
    """Rules of an ids config: {"rules": PATH} or {"rules_text": TEXT};
    returns (rules, source name)."""
    text, source = rule_text(config, "<ids config>: needs 'rules' (a rule file) or 'rules_text'")
    return parse_rules(text, source), source
