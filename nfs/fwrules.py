"""The firewall's rule file: reading and checking it.

One rule a line, first match wins, `#` starts a comment:

    # action  proto  source        destination    sport  dport
    allow     tcp    any           10.0.1.0/24    any    80
    deny      udp    10.0.0.0/8    any            any    1000-2000
    allow     icmp   any           any
    default   deny

action is `allow` or `deny`; proto `tcp`, `udp`, `icmp`, `icmp6`, `sctp`,
`any` or a number; addresses `any` or IPv4 or IPv6 networks (a rule with
an IPv4 address is for IPv4 packets, one with an IPv6 address for IPv6
packets, one with `any` for both; one rule cannot name both families);
ports `any`, a number or `LO-HI` (only with tcp, udp, sctp).  `default` (allow or deny) says what happens to
packets no rule matches; it is deny when absent.  Errors are
`FILE:LINE: message`, all of them, not only the first.
"""
import dataclasses
import ipaddress

from nflib.api import rule_text
from nfs.nfconfig import collector

PROTOS = {"any": None, "icmp": 1, "tcp": 6, "udp": 17, "sctp": 132, "icmp6": 58}
PORT_PROTOS = (6, 17, 132)


@dataclasses.dataclass(frozen=True)
class Rule:
    allow: bool
    proto: object      # int or None
    src: object        # "a.b.c.d/n", "2001:db8::/32" or None
    dst: object
    sport: tuple
    dport: tuple
    line: int
    text: str

    @property
    def family(self):
        """4 or 6: the packets the rule is for; 0: both (no address)."""
        nets = [n for n in (self.src, self.dst) if n is not None]
        return ipaddress.ip_network(nets[0]).version if nets else 0

    def acl(self):
        """The IPv4 ACL's rule (nflib.nf.Acl); family 6 rules have none."""
        return (self.proto, self.src, self.dst, self.sport, self.dport)


def _ports(word):
    if word == "any":
        return (0, 65535)
    lo, _, hi = word.partition("-")
    lo, hi = int(lo), int(hi or lo)
    if not (0 <= lo <= hi <= 65535):
        raise ValueError(f"port range {word!r} must be within 0-65535, low to high")
    return (lo, hi)


def _net(word):
    if word == "any":
        return None
    family = ipaddress.IPv6Network if ":" in word else ipaddress.IPv4Network
    return str(family(word, strict=False))


def parse_rules(text, source="<rules>"):
    """Returns (rules, default_allow); raises NFConfigError with every error."""
    rules, errors, default = [], collector(), False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        where = f"{source}:{lineno}"
        if words[0] == "default":
            if len(words) != 2 or words[1] not in ("allow", "deny"):
                errors.add(where, f"default takes allow or deny, got {' '.join(words[1:])!r}")
            else:
                default = words[1] == "allow"
            continue
        if words[0] not in ("allow", "deny"):
            errors.add(where, f"action must be allow, deny or default, not {words[0]!r}")
            continue
        if len(words) not in (4, 6):
            errors.add(where, f"expected 'ACTION PROTO SRC DST [SPORT DPORT]', got {len(words)} fields")
            continue
        try:
            proto = int(words[1]) if words[1].isdigit() else PROTOS[words[1]]
            if proto is not None and not 0 <= proto <= 255:
                raise ValueError(f"protocol number {proto} is not 0-255")
        except KeyError:
            errors.add(where, f"unknown protocol {words[1]!r}; use {', '.join(PROTOS)} or a number")
            continue
        except ValueError as err:
            errors.add(where, f"{err}")
            continue
        try:
            src, dst = _net(words[2]), _net(words[3])
        except ValueError as err:
            errors.add(where, f"bad address: {err}")
            continue
        if src and dst and ipaddress.ip_network(src).version != ipaddress.ip_network(dst).version:
            errors.add(where, f"source {words[2]} and destination {words[3]} are not of one "
                              f"family (IPv4 or IPv6): a packet is one or the other")
            continue
        sport = dport = (0, 65535)
        if len(words) == 6:
            if proto not in PORT_PROTOS and words[4:] != ["any", "any"]:
                errors.add(where, f"ports need tcp, udp or sctp, not {words[1]}")
                continue
            try:
                sport, dport = _ports(words[4]), _ports(words[5])
            except ValueError as err:
                errors.add(where, f"{err}")
                continue
        rules.append(Rule(words[0] == "allow", proto, src, dst, sport, dport, lineno, line))
    errors.raise_if_any()
    return rules, default


def load_rules(config):
    """Rules from an NF config: {"rules": PATH} or {"rules_text": TEXT}."""
    return parse_rules(*rule_text(
        config, "firewall config needs 'rules' (a rule file) or 'rules_text'"))
