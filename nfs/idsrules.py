"""The IDS's rule language: Snort/Suricata rules as Emerging Threats and
the Snort community write them, read and checked.  One rule a line, `#`
comments:

    alert tcp $EXTERNAL_NET any -> $HOME_NET $HTTP_PORTS (msg:"admin probe"; flow:established,to_server; content:"GET /admin"; nocase; classtype:web-application-attack; sid:1001; rev:1;)
    drop  tcp any any <> [10.0.0.0/8,!10.9.0.0/16] !22 (msg:"shellcode"; content:"|90 90 90 90|"; pcre:"/bin\\/(ba)?sh/i"; sid:1002;)

action `alert` or `drop`; proto `tcp`, `udp`, `icmp` or `ip`; addresses
`any`, an IPv4 address or network, a variable, `[list]`, `!negation`
(nested); ports `any`, `N`, `N:M`, `N:`, `:M`, variables, lists and
negation (tcp and udp only); direction `->` or `<>`.  Variables default
to Suricata's (`DEFAULT_VARS`) and are overridden by the NF config's
"vars".  Options: `msg`, `content` (`|hex|` bytes; `nocase`,
`fast_pattern`, `offset`, `depth`, `distance`, `within`, `startswith`,
`endswith` after it), `pcre:"/RE/FLAGS"` (flags i, s, m, R and the HTTP
buffers; R: the match ends after the content before it), `flow` (established, not_established, stateless, to_server,
to_client, from_server, from_client), `dsize`, `bsize`, `urilen`,
`flowbits`, `flags`, `threshold`, `isdataat`, `byte_test` (with a payload
content: ByteTest), HTTP modifiers and sticky
buffers, `sid` (required, unique); `rev`, `classtype`, `priority`,
`metadata`, `reference`, `gid`, `target` are kept (rev, classtype and
priority go into alerts).  A rule fires when every one of its contents and
pcres is found in the payload (in stream order for TCP) and its header
and flow match.

A ruleset is never all or nothing: a rule the IDS cannot run (an unknown
keyword such as `byte_jump` or `xbits`, an IPv6-only address, a duplicate sid) is skipped, counted and named
(`Skipped`: line, sid, keyword at fault, message), as Suricata's "rules
failed to load"; only a file with no runnable rule is an error, listing
every line at fault.
"""
import dataclasses
import hashlib
import ipaddress
import os
import re

from contracts.validate import already_used
from nflib.api import rule_text
from nfs.nfconfig import collector

PROTOS = {"ip": 0, "icmp": 1, "tcp": 6, "udp": 17, "http": 6}
# Where a content or pcre looks: the packet's payload, or a part of the
# HTTP request the IDS parsed from it (nfs/ids.pyx numbers them the same).
BUFFERS = ("payload", "method", "uri", "raw_uri", "header", "user_agent", "host", "cookie",
           "stat_code", "stat_msg", "response_line", "response_body", "request_body",
           "file_data", "server", "content_type", "accept")
# Snort 2 modifiers (after the content) and Suricata's sticky buffers
# (before the contents) -> buffer.
HTTP_MODIFIERS = {"http_method": "method", "http_uri": "uri", "http_raw_uri": "raw_uri",
                  "http_header": "header", "http_raw_header": "header",
                  "http_user_agent": "user_agent", "http_host": "host",
                  "http_raw_host": "host", "http_cookie": "cookie",
                  "http_stat_code": "stat_code", "http_stat_msg": "stat_msg",
                  "http_server_body": "response_body", "http_client_body": "request_body"}
STICKY_BUFFERS = {"http.method": "method", "http.uri": "uri", "http.uri.raw": "raw_uri",
                  "http.header": "header", "http.header.raw": "header",
                  "http.user_agent": "user_agent", "http.host": "host",
                  "http.host.raw": "host", "http.cookie": "cookie", "pkt_data": "payload",
                  "http.stat_code": "stat_code", "http.stat_msg": "stat_msg",
                  "http.response_line": "response_line",
                  "http.response_body": "response_body", "http.request_body": "request_body",
                  "http.client_body": "request_body",
                  "file.data": "file_data", "file_data": "file_data",
                  "http.server": "server", "http.content_type": "content_type",
                  "http.accept": "accept", "http.response_header": "header"}
PCRE_BUFFER_FLAGS = {"U": "uri", "I": "raw_uri", "H": "header", "M": "method", "C": "cookie",
                     "V": "user_agent", "W": "host", "S": "stat_code", "Y": "stat_msg",
                     "P": "request_body", "Q": "file_data"}
KEPT_OPTIONS = ("rev", "classtype", "priority", "metadata", "reference", "gid", "target")
FLOW_WORDS = {"established": ("established", 1), "not_established": ("established", 2),
              "stateless": None, "to_server": ("direction", 1), "from_client": ("direction", 1),
              "to_client": ("direction", 2), "from_server": ("direction", 2)}
# Suricata's suricata.yaml defaults (vars: address-groups and port-groups).
DEFAULT_VARS = {
    "HOME_NET": "[192.168.0.0/16,10.0.0.0/8,172.16.0.0/12]",
    "EXTERNAL_NET": "!$HOME_NET",
    "HTTP_SERVERS": "$HOME_NET", "SMTP_SERVERS": "$HOME_NET", "SQL_SERVERS": "$HOME_NET",
    "DNS_SERVERS": "$HOME_NET", "TELNET_SERVERS": "$HOME_NET", "AIM_SERVERS": "$EXTERNAL_NET",
    "DC_SERVERS": "$HOME_NET", "DNP3_SERVER": "$HOME_NET", "DNP3_CLIENT": "$HOME_NET",
    "MODBUS_CLIENT": "$HOME_NET", "MODBUS_SERVER": "$HOME_NET", "ENIP_CLIENT": "$HOME_NET",
    "ENIP_SERVER": "$HOME_NET",
    "HTTP_PORTS": "80", "SHELLCODE_PORTS": "!80", "ORACLE_PORTS": "1521", "SSH_PORTS": "22",
    "DNP3_PORTS": "20000", "MODBUS_PORTS": "502", "FILE_DATA_PORTS": "[$HTTP_PORTS,110,143]",
    "FTP_PORTS": "21", "GENEVE_PORTS": "6081", "VXLAN_PORTS": "4789", "TEREDO_PORTS": "3544",
}


@dataclasses.dataclass
class Pattern:
    regex: str          # for Hyperscan
    caseless: bool = False
    dotall: bool = False
    multiline: bool = False
    length: int = 0     # a content's bytes (0: a pcre)
    offset: int = 0     # content starts at or after this payload byte
    depth: int = 0      # and ends within this many bytes of `offset` (0: anywhere)
    buffer: str = "payload"   # one of BUFFERS
    relative: bool = False    # distance/within: placed after the previous content
    distance: int = 0         # starts at least this far after its end
    within: int = 0           # and ends within this many bytes of that start (0: anywhere)
    isdataat: int = -1        # isdataat:N,relative after it: payload byte end+N exists (-1: none)
    isdataat_neg: bool = False   # isdataat:!N,relative: it does not
    negated: bool = False     # content:!"...": the rule needs it absent
    endswith: bool = False    # its match ends where its buffer ends
    size: tuple = (0, 0xFFFFFFFF)   # its buffer's length, low to high (bsize, urilen)
    byte_test: object = None  # ByteTest checked with a match of it (relative: after its end)

    def end_range(self):
        """(first, last) payload offset a match of this content may end
        at (Snort's offset and depth), or None if it may end anywhere."""
        if not (self.offset or self.depth):
            return None
        last = self.offset + self.depth if self.depth else 0xFFFFFFFF
        return self.offset + self.length, last


@dataclasses.dataclass
class Rule:
    action: str
    proto: int
    src: list            # [(IPv4Network, negated)]; [] is any
    sport: list          # [(lo, hi, negated)]; [] is any
    dst: list
    dport: list
    bidir: bool
    sid: int = 0
    msg: str = ""
    patterns: list = dataclasses.field(default_factory=list)
    line: int = 0
    text: str = ""
    dsize: tuple = (0, 0xFFFF)   # payload bytes, low to high
    flags: tuple = (0, 0, 0)     # TCP flags: (mode, flags, ignored); mode 0: any packet
    threshold: tuple = None      # (kind, track, count, seconds): THRESHOLD_KINDS, TRACKS
    established: int = 0     # 1: established only, 2: not established only
    direction: int = 0       # 1: to_server, 2: to_client
    rev: int = 0
    classtype: str = ""
    priority: int = 0
    metadata: list = dataclasses.field(default_factory=list)
    references: list = dataclasses.field(default_factory=list)
    sizes: list = dataclasses.field(default_factory=list)   # [(buffer, (lo, hi), keyword)]
    flowbits: list = dataclasses.field(default_factory=list)   # [(op, [names])]: FLOWBIT_OPS
    noalert: bool = False    # flowbits:noalert: it sets and clears bits, never alerts
    absolute_byte_tests: list = dataclasses.field(default_factory=list)   # [ByteTest] not relative


@dataclasses.dataclass
class Skipped:
    """A rule the IDS cannot run, and why."""
    line: int
    sid: int             # 0 if unknown
    keyword: str
    message: str


class Ruleset(list):
    """The rules that run; `.skipped` those that do not ([Skipped])."""
    def __init__(self, rules=(), skipped=()):
        super().__init__(rules)
        self.skipped = list(skipped)


class RuleError(ValueError):
    def __init__(self, message, keyword="header"):
        super().__init__(message)
        self.keyword = keyword


def _items(word, what, variables, depth=0):
    """A Snort address or port spec -> [(atom, negated)], variables
    expanded, lists flattened, negation carried into the atoms."""
    word = word.strip()
    if depth > 16:
        raise RuleError(f"{what} {word!r}: variables nest too deep (a loop?)", "variable")
    if word.startswith("!"):
        return [(atom, not neg) for atom, neg in _items(word[1:], what, variables, depth + 1)]
    if word.startswith("$"):
        name = word[1:]
        if name not in variables:
            raise RuleError(f"variable ${name} is not defined; give it under \"vars\" "
                            f"in the ids config", "variable")
        return _items(variables[name], what, variables, depth + 1)
    if word.startswith("["):
        if not word.endswith("]"):
            raise RuleError(f"{what} list {word!r} has no closing ]")
        out = []
        for part in _list_parts(word[1:-1], what):
            out += _items(part, what, variables, depth + 1)
        return out
    return [(word, False)]


def _list_parts(body, what):
    parts, cur, level = [], "", 0
    for ch in body:
        if ch == "[":
            level += 1
        elif ch == "]":
            level -= 1
        if ch == "," and level == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    if level or not all(p.strip() for p in parts):
        raise RuleError(f"{what} list [{body}] is not a comma-separated list")
    return parts


def _nets(word, what, variables):
    """[(IPv4Network, negated)]; [] matches any address."""
    out, v6 = [], 0
    for atom, neg in _items(word, what, variables):
        if atom == "any":
            if neg:
                raise RuleError(f"{what} address !any matches nothing")
            continue
        try:
            net = ipaddress.ip_network(atom, strict=False)
        except ValueError:
            raise RuleError(f"{what} address {atom!r} is not any, an IPv4 address or network"
                            ) from None
        if net.version == 6:
            v6 += 1
            continue
        out.append((net, neg))
    if v6 and not any(not neg for _, neg in out) and \
            all(atom != "any" for atom, _ in _items(word, what, variables)):
        raise RuleError(f"{what} {word!r} names only IPv6 networks; this IDS matches IPv4",
                        "ipv6")
    return out


def _ports(word, what, variables=None):
    """[(lo, hi, negated)]; [] matches any port."""
    out = []
    for atom, neg in _items(word, what, variables or {}):
        if atom == "any":
            continue
        m = re.fullmatch(r"(\d*)(:?)(\d*)", atom)
        if not m or not (m.group(1) or m.group(3)) or (m.group(3) and not m.group(2)):
            raise RuleError(f"{what} port {atom!r} is not any, N, N:M, N: or :M")
        lo = int(m.group(1) or 0)
        hi = int(m.group(3) or (65535 if m.group(2) else lo))
        if not 0 <= lo <= hi <= 65535:
            raise RuleError(f"{what} port range {atom!r} must be within 0-65535, low to high")
        out.append((lo, hi, neg))
    return out


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


def _pcre(value, buffer="payload"):
    text = _quoted(value, "pcre")
    if not text.startswith("/") or text.rfind("/") == 0:
        raise RuleError('pcre takes "/REGEX/FLAGS"', "pcre")
    end = text.rfind("/")
    regex, flags = text[1:end], text[end + 1:]
    bad = set(flags) - set("ismR") - set(PCRE_BUFFER_FLAGS)
    if bad:
        raise RuleError(f"pcre flags {''.join(sorted(bad))!r} are not run by this IDS "
                        f"(it runs i, s, m, R and {', '.join(PCRE_BUFFER_FLAGS)})", "pcre")
    if "R" in flags and regex.startswith("^"):
        raise RuleError("pcre with R anchored by ^ (right after the previous content) is not "
                        "run by this IDS: Hyperscan reports where a match ends, not where it "
                        "starts", "pcre")
    if not regex:
        raise RuleError("pcre is empty", "pcre")
    buffers = {PCRE_BUFFER_FLAGS[f] for f in flags if f in PCRE_BUFFER_FLAGS}
    if len(buffers) > 1:
        raise RuleError(f"pcre flags {flags!r} name more than one HTTP buffer", "pcre")
    return Pattern(regex, "i" in flags, "s" in flags, "m" in flags,
                   buffer=buffers.pop() if buffers else buffer, relative="R" in flags)


HEADER = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*\((.*)\)\s*$")


def parse_rule(line, lineno, variables=None):
    m = HEADER.match(line)
    if not m:
        raise RuleError("expected 'ACTION PROTO SRC SPORT -> DST DPORT (OPTIONS)'")
    action, proto, src, sport, direction, dst, dport, body = m.groups()
    if action not in ("alert", "drop"):
        raise RuleError(f"action must be alert or drop, not {action!r}", "action")
    if proto not in PROTOS:
        raise RuleError(f"protocol must be one of {', '.join(PROTOS)}, not {proto!r}",
                        "protocol")
    if direction not in ("->", "<>"):
        raise RuleError(f"direction must be -> or <>, not {direction!r}", "direction")
    variables = DEFAULT_VARS if variables is None else variables
    if PROTOS[proto] not in (6, 17) and (sport, dport) != ("any", "any"):
        raise RuleError(f"ports need tcp or udp, not {proto}")
    rule = Rule(action, PROTOS[proto], _nets(src, "source", variables),
                _ports(sport, "source", variables), _nets(dst, "destination", variables),
                _ports(dport, "destination", variables),
                direction == "<>", line=lineno, text=line)
    _options(rule, _split_options(body))
    return rule


def _flow(rule, value):
    if not value:
        raise RuleError("flow takes words, like flow:established,to_server", "flow")
    for word in (w.strip() for w in value.split(",")):
        if word not in FLOW_WORDS:
            raise RuleError(f"flow:{word} is not run by this IDS; it runs "
                            f"{', '.join(FLOW_WORDS)}", "flow")
        if FLOW_WORDS[word]:
            attr, val = FLOW_WORDS[word]
            setattr(rule, attr, val)


def _size_range(value, key, top=0xFFFF):
    """N, <N, >N, <=N, >=N or N<>M (exclusive, as Suricata's dsize) ->
    (low, high), both within 0..top."""
    text = (value or "").replace(" ", "")
    m = re.fullmatch(r"(\d+)<>(\d+)|(<=|>=|[<>]?)(\d+)", text)
    if not m:
        raise RuleError(f"{key} takes N, <N, >N, <=N, >=N or N<>M, got {value!r}", key)
    if m.group(1) is not None:
        lo, hi = int(m.group(1)) + 1, int(m.group(2)) - 1
    else:
        n = int(m.group(4))
        lo, hi = {"": (n, n), "<": (0, n - 1), ">": (n + 1, top), "<=": (0, n),
                  ">=": (n, top)}[m.group(3)]
    if not 0 <= lo <= hi <= top:
        raise RuleError(f"{key}:{value} matches no size", key)
    return (lo, hi)


def _dsize(value):
    """dsize:N, dsize:<N, dsize:>N, dsize:N<>M -> (low, high) payload bytes."""
    return _size_range(value, "dsize")


def _urilen(value):
    """urilen:RANGE[,norm|,raw] -> (buffer, (low, high))."""
    text, _, kind = (value or "").partition(",")
    if kind.strip() not in ("", "norm", "raw"):
        raise RuleError(f"urilen takes RANGE, RANGE,norm or RANGE,raw; got {value!r}", "urilen")
    return ("raw_uri" if kind.strip() == "raw" else "uri"), _size_range(text, "urilen",
                                                                        0xFFFFFFFF)


def _buffer_sizes(rule):
    """Give bsize and urilen to the contents of their buffer (checked on
    each match: the buffer's length); a buffer without one cannot be
    measured by this IDS."""
    for buffer, (lo, hi), key in rule.sizes:
        mine = [p for p in rule.patterns if p.buffer == buffer]
        if not any(not p.negated for p in mine):
            raise RuleError(f"{key} needs a content or pcre in its buffer ({buffer}) to be "
                            f"checked by this IDS", key)
        for p in mine:
            p.size = (max(p.size[0], lo), min(p.size[1], hi))


THRESHOLD_KINDS = {"limit": 1, "threshold": 2, "both": 3, "detection_filter": 4}
TRACKS = {"by_src": 0, "by_dst": 1, "by_rule": 2}


def _threshold(key, value):
    """threshold: type limit|threshold|both, track by_src|by_dst|by_rule,
    count N, seconds M;  detection_filter: track ..., count N, seconds M.
    -> (kind, track, count, seconds)."""
    fields = {}
    for part in (value or "").split(","):
        name, _, arg = part.strip().partition(" ")
        if not name or not arg.strip() or name in fields:
            raise RuleError(f"{key} takes 'type T, track by_src|by_dst, count N, seconds M', "
                            f"got {value!r}", key)
        fields[name] = arg.strip()
    want = {"track", "count", "seconds"} | ({"type"} if key == "threshold" else set())
    if set(fields) != want:
        raise RuleError(f"{key} needs exactly {', '.join(sorted(want))}; got "
                        f"{', '.join(sorted(fields)) or 'nothing'}", key)
    kind = fields.get("type", "detection_filter")
    if kind not in THRESHOLD_KINDS or fields["track"] not in TRACKS \
            or not fields["count"].isdigit() or not fields["seconds"].isdigit() \
            or int(fields["count"]) == 0 or int(fields["seconds"]) == 0:
        raise RuleError(f"{key}: type is limit, threshold or both, track by_src, by_dst or "
                        f"by_rule, count and seconds positive numbers; got {value!r}", key)
    return (THRESHOLD_KINDS[kind], TRACKS[fields["track"]], int(fields["count"]),
            int(fields["seconds"]))


TCP_FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20,
                 "E": 0x40, "C": 0x80, "1": 0x80, "2": 0x40}
FLAG_MODES = {"": 1, "+": 2, "*": 3, "!": 4}


def _tcp_flags(value):
    """flags:[+*!]FLAGS[,IGNORED] -> (mode, bits, ignored bits): mode 1
    exactly these, 2 these and maybe others, 3 any of these, 4 none."""
    m = re.fullmatch(r"\s*([+*!]?)([FSRPAUEC120]+)([+*!]?)\s*(?:,\s*([FSRPAUEC12]+))?\s*",
                     value or "")
    if not m or (m.group(1) and m.group(3)):
        raise RuleError(f"flags takes [+*!]FLAGS[,IGNORED] with F S R P A U E C, got {value!r}",
                        "flags")
    bits = 0 if m.group(2) == "0" else sum(TCP_FLAG_BITS[c] for c in m.group(2) if c != "0")
    ignored = sum(TCP_FLAG_BITS[c] for c in (m.group(4) or ""))
    return (FLAG_MODES[m.group(1) or m.group(3)], bits, ignored)


def _isdataat(rule, last_content, value):
    """isdataat:[!]N[,relative]: relative to the content before it (kept on
    that content), or absolute (a payload size bound, as dsize)."""
    m = re.fullmatch(r"\s*(!?)\s*(\d+)\s*(,\s*relative\s*)?", value or "")
    if not m:
        raise RuleError(f"isdataat takes [!]N or [!]N,relative, got {value!r}", "isdataat")
    neg, n, relative = m.group(1) == "!", int(m.group(2)), bool(m.group(3))
    if not relative:
        lo, hi = rule.dsize
        rule.dsize = (lo, min(hi, n)) if neg else (max(lo, n + 1), hi)
        if rule.dsize[0] > rule.dsize[1]:
            raise RuleError(f"isdataat:{value} with dsize matches no payload size", "isdataat")
        return
    if last_content is None or last_content.buffer != "payload":
        raise RuleError("isdataat,relative must follow a content of the payload", "isdataat")
    last_content.isdataat, last_content.isdataat_neg = n, neg


FLOWBIT_OPS = {"set": 1, "unset": 2, "toggle": 3, "isset": 4, "isnotset": 5}
FLOWBIT_MAX_OR = 8


@dataclasses.dataclass
class ByteTest:
    """byte_test:N,[!]OP,VALUE,OFFSET[,relative][,big|little][,string,hex|dec|oct]:
    N bytes at OFFSET (from the payload's start, or with `relative` from
    the end of the content before it) read as a number (binary, big endian
    unless `little`; with `string`, as text in `base`) and compared with
    VALUE by OP (<, >, =, <=, >=, & any bit set, ^ any bit differs)."""
    n: int
    op: str
    value: int
    offset: int
    relative: bool = False
    little: bool = False
    base: int = 0           # 0: binary; 8, 10, 16: a number written as text
    negated: bool = False

    OPS = ("<", ">", "=", "<=", ">=", "&", "^")


def _byte_test(value):
    parts = [x.strip() for x in (value or "").split(",")]
    if len(parts) < 4:
        raise RuleError(f"byte_test takes N,OP,VALUE,OFFSET[,flags], got {value!r}", "byte_test")
    n, op, number, offset = parts[:4]
    if not n.isdigit() or not 1 <= int(n) <= 10:
        raise RuleError(f"byte_test reads 1 to 10 bytes, not {n!r}", "byte_test")
    negated = op.startswith("!")
    op = op[1:] if negated else op
    if op == "!":
        op, negated = "=", True     # byte_test:N,!,V: not equal (Snort's old spelling)
    if op not in ByteTest.OPS:
        raise RuleError(f"byte_test operator {op!r} is not one of {', '.join(ByteTest.OPS)}",
                        "byte_test")
    try:
        number = int(number, 0)
        offset = int(offset)
    except ValueError:
        raise RuleError(f"byte_test's value and offset must be numbers, got {value!r}",
                        "byte_test") from None
    test = ByteTest(int(n), op, number, offset, negated=negated)
    flags = parts[4:]
    bases = {"hex": 16, "dec": 10, "oct": 8}
    for flag in flags:
        if flag == "relative":
            test.relative = True
        elif flag in ("big", "little"):
            test.little = flag == "little"
        elif flag == "string":
            test.base = test.base or 10
        elif flag in bases:
            test.base = bases[flag]
        else:
            raise RuleError(f"byte_test flag {flag!r} is not run by this IDS (relative, big, "
                            f"little, string, hex, dec, oct are)", "byte_test")
    if test.base and "string" not in flags:
        raise RuleError("byte_test: hex, dec and oct go with string", "byte_test")
    if not test.base and test.n > 8:
        raise RuleError(f"byte_test reads at most 8 bytes as a binary number, not {test.n}",
                        "byte_test")
    if not 0 <= test.value < 1 << 64:
        raise RuleError(f"byte_test value {test.value} does not fit 64 bits", "byte_test")
    return test


def _attach_byte_test(rule, last_content, value):
    """A relative byte_test goes with the payload content before it, an
    absolute one with the rule's first payload content (checked wherever
    that one matched: the rule then needs both); one a content."""
    test = _byte_test(value)
    if test.relative:
        target = last_content
        if target is None or target.buffer != "payload" or target.length == 0 \
                or target.negated:
            raise RuleError("byte_test,relative must follow a content of the payload",
                            "byte_test")
    else:
        rule.absolute_byte_tests.append(test)     # placed once the rule is read
        return
    _give_byte_test(target, test)


def _give_byte_test(target, test):
    if target.byte_test is not None:
        raise RuleError("more than one byte_test on one content is not run by this IDS",
                        "byte_test")
    target.byte_test = test


def _flowbits(rule, value):
    """flowbits:set|unset|toggle|isset|isnotset,NAME (isset: NAME|NAME...,
    any of them), or flowbits:noalert."""
    parts = [p.strip() for p in (value or "").split(",")]
    if parts == ["noalert"]:
        rule.noalert = True
        return
    if len(parts) != 2 or parts[0] not in FLOWBIT_OPS or not parts[1]:
        raise RuleError(f"flowbits takes {', '.join(FLOWBIT_OPS)} and a name, or noalert; "
                        f"got {value!r}", "flowbits")
    names = [n.strip() for n in parts[1].split("|")]
    if "&" in parts[1] or not all(names) or (len(names) > 1 and parts[0] != "isset") \
            or len(names) > FLOWBIT_MAX_OR:
        raise RuleError(f"flowbits:{value}: this IDS runs one name, or for isset up to "
                        f"{FLOWBIT_MAX_OR} joined by | (any of them)", "flowbits")
    rule.flowbits.append((FLOWBIT_OPS[parts[0]], names))


def _number(value, key):
    if value is None or not value.strip().isdigit():
        raise RuleError(f"{key} must be a number, got {value!r}", key)
    return int(value)


def _options(rule, pairs):
    last_content = None
    sticky = "payload"
    for key, value in pairs:
        if key == "msg":
            rule.msg = _unescape(_quoted(value, "msg"), "msg")
        elif key == "content":
            negated = value is not None and value.startswith("!")
            raw = content_bytes(_quoted(value[1:].strip() if negated else value, "content"))
            last_content = Pattern("".join(f"\\x{b:02x}" for b in raw), length=len(raw),
                                   buffer=sticky, negated=negated)
            rule.patterns.append(last_content)
        elif key in ("offset", "depth"):
            if last_content is None:
                raise RuleError(f"{key} must follow a content", key)
            n = _number(value, key)
            if key == "depth" and n < last_content.length:
                raise RuleError(f"depth:{n} is shorter than its content ({last_content.length} "
                                f"bytes): the rule can never match", key)
            setattr(last_content, key, n)
        elif key in ("distance", "within"):
            if last_content is None:
                raise RuleError(f"{key} must follow a content", key)
            previous = [p for p in rule.patterns[:-1]]
            if not previous or previous[-1].length == 0 or previous[-1].negated \
                    or previous[-1].buffer != last_content.buffer:
                raise RuleError(f"{key} is relative to a previous content in the same buffer; "
                                f"this one has none (a pcre or a negated content before it is "
                                f"not run relatively)", key)
            text = (value or "").strip()
            if not re.fullmatch(r"-?\d+", text):
                raise RuleError(f"{key} must be a number, got {value!r}", key)
            if key == "within" and int(text) < last_content.length:
                raise RuleError(f"within:{text} is shorter than its content "
                                f"({last_content.length} bytes): the rule can never match", key)
            last_content.relative = True
            setattr(last_content, key, int(text))
        elif key in ("threshold", "detection_filter"):
            if rule.threshold is not None:
                raise RuleError("a rule takes one threshold or detection_filter", key)
            rule.threshold = _threshold(key, value)
        elif key == "flags":
            rule.flags = _tcp_flags(value)
        elif key == "isdataat":
            _isdataat(rule, last_content, value)
        elif key == "byte_test":
            _attach_byte_test(rule, last_content, value)
        elif key == "dsize":
            rule.dsize = _dsize(value)
        elif key == "bsize":
            rule.sizes.append((sticky, _size_range(value, "bsize", 0xFFFFFFFF), "bsize"))
        elif key == "urilen":
            buffer, span = _urilen(value)
            rule.sizes.append((buffer, span, "urilen"))
        elif key in ("startswith", "endswith"):
            if value is not None:
                raise RuleError(f"{key} takes no value", key)
            if last_content is None:
                raise RuleError(f"{key} must follow a content", key)
            if key == "endswith":
                last_content.endswith = True
            elif last_content.relative or last_content.offset or last_content.depth:
                raise RuleError("startswith with offset, depth, distance or within is not "
                                "run by this IDS", key)
            else:
                last_content.depth = last_content.length     # at the buffer's start
        elif key in ("nocase", "fast_pattern"):
            if key == "nocase" and value is not None:
                raise RuleError("nocase takes no value", key)
            if last_content is None:
                raise RuleError(f"{key} must follow a content", key)
            if key == "nocase":
                last_content.caseless = True
            # fast_pattern only tells Snort which content to prefilter on;
            # Hyperscan matches every content at once.
        elif key == "pcre":
            pattern = _pcre(value, sticky)
            if pattern.relative:
                # R: its match ends after the previous content's end
                # (a match that starts inside that content also counts).
                before = rule.patterns[-1] if rule.patterns else None
                if before is None or before.length == 0 or before.negated \
                        or before.buffer != pattern.buffer:
                    raise RuleError("pcre with R is relative to a content before it in the "
                                    "same buffer; this one has none", "pcre")
            rule.patterns.append(pattern)
            last_content = None
        elif key in STICKY_BUFFERS:
            if value is not None:
                raise RuleError(f"{key} takes no value", key)
            sticky = STICKY_BUFFERS[key]
            last_content = None
        elif key in HTTP_MODIFIERS:
            if value is not None:
                raise RuleError(f"{key} takes no value", key)
            if last_content is None:
                raise RuleError(f"{key} must follow a content", key)
            last_content.buffer = HTTP_MODIFIERS[key]
        elif key == "flow":
            _flow(rule, value)
        elif key == "flowbits":
            _flowbits(rule, value)
        elif key == "sid":
            if value is None or not value.isdigit() or int(value) == 0:
                raise RuleError(f"sid must be a positive number, got {value!r}", "sid")
            rule.sid = int(value)
        elif key == "rev":
            rule.rev = _number(value, "rev")
        elif key == "priority":
            rule.priority = _number(value, "priority")
        elif key == "classtype":
            rule.classtype = (value or "").strip()
        elif key == "metadata":
            rule.metadata.append((value or "").strip())
        elif key == "reference":
            rule.references.append((value or "").strip())
        elif key in KEPT_OPTIONS:
            continue
        else:
            raise RuleError(f"option {key!r} is not run by this IDS (docs/nfs.md, ids, "
                            f"lists the keywords it runs)", key)
    if not rule.sid:
        raise RuleError("every rule needs a sid", "sid")
    _buffer_sizes(rule)
    for test in rule.absolute_byte_tests:
        target = next((p for p in rule.patterns if p.buffer == "payload" and p.length
                       and not p.negated), None)
        if target is None:
            raise RuleError("byte_test needs a content of the payload in its rule to run "
                            "with (this IDS checks it on that content's matches)", "byte_test")
        _give_byte_test(target, test)
    if not any(not p.negated for p in rule.patterns):
        raise RuleError("a rule needs at least one content or pcre"
                        + (" that is not negated" if rule.patterns else ""), "content")


def _sid_of(line):
    m = re.search(r"[(;]\s*sid\s*:\s*(\d+)\s*;", line)
    return int(m.group(1)) if m else 0


def variables_of(overrides=None):
    """Suricata's default variables with the NF config's "vars" over them."""
    out = dict(DEFAULT_VARS)
    for name, value in (overrides or {}).items():
        out[name.lstrip("$")] = str(value)
    return out


def parse_rules(text, source="<rules>", variables=None):
    """Ruleset of the rules that run, `.skipped` naming the others; raises
    NFConfigError (every line at fault, FILE:LINE: message) only when no
    rule can run."""
    variables = variables_of() if variables is None else variables
    rules, skipped, sids = Ruleset(), [], {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rule = parse_rule(line, lineno, variables)
        except RuleError as err:
            skipped.append(Skipped(lineno, _sid_of(line), err.keyword, str(err)))
            continue
        if rule.sid in sids:
            skipped.append(Skipped(lineno, rule.sid, "sid", already_used(
                f"sid {rule.sid}", "another rule", sids[rule.sid])))
            continue
        sids[rule.sid] = lineno
        rules.append(rule)
    rules.skipped = skipped
    if not rules:
        errors = collector()
        for sk in skipped:
            errors.add(f"{source}:{sk.line}", sk.message)
        if not skipped:
            errors.add(source, "no rules")
        errors.raise_if_any()
    return rules


def skipped_report(rules, source):
    """One line per skipped rule, for the log: `FILE:LINE: sid N: keyword: why`."""
    return [f"{source}:{sk.line}: sid {sk.sid or '?'}: {sk.keyword}: {sk.message}"
            for sk in rules.skipped]


def load_rules(config):
    """Rules of an ids config: {"rules": PATH} or {"rules_text": TEXT},
    variables from its "vars"; returns (Ruleset, source name)."""
    text, source = rule_text(config, "<ids config>: needs 'rules' (a rule file) or 'rules_text'")
    return parse_rules(text, source, variables_of(config.get("vars"))), source


def file_stamp(path, known=None):
    """(mtime_ns, size, sha256 hex) of a rule file: what tells a reload
    that it changed.  `known`, a stamp taken before, is returned as it is
    when the mtime and size are the same (the file is not read again)."""
    st = os.stat(path)
    if known is not None and known[:2] == (st.st_mtime_ns, st.st_size):
        return known
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return (st.st_mtime_ns, st.st_size, digest)
