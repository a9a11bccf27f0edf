"""The config of every built-in NF type, checked in plain Python: no DPDK,
no EAL.  Each NF's constructor calls its parser here, and `onvm topo
validate` calls the same parser through `check_config`, so a config that
passes validate is one every agent takes.

    check_config("lb", {"file": "lb.yaml"})   -> what LoadBalancer builds from
    check_config("firewall", {})               -> NFConfigError("firewall config needs ...")

Errors are NFConfigError, every one, each with its place (`FILE:LINE: key:
message` for files, `<lb config>: key: message` inline; nfs/nfconfig.py).
A third-party NF type (entry point group `onvm.nfs`) may offer the same
check as a `check_config(config)` attribute of what its entry point names;
`check_config` raises `NotCheckable` for one that does not.

Also here: `instance_config`, how a catalog's config path becomes the
config a plan instance carries (what the agent hands the constructor).

Not here: reading rule files (nfs/fwrules.py, nfs/idsrules.py), the key
checker (nfs/nfconfig.py), building NFs (nfs/api.py).
"""
import ipaddress
import os

from nfs import nfconfig
from nflib.api import NFConfigError, nf_types
from nfs.fwrules import load_rules as firewall_rules
from nfs.idsrules import load_rules as ids_rules

CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")

# These equal the DEFs of the same names in nfs/lb.pyx and nfs/ratelimit.pyx,
# where they size C arrays (a Cython DEF cannot be imported).
MAX_BACKENDS = 256
MAX_CHAINS = 64
NAT_PROTO_NAMES = ("tcp", "udp", "icmp")
STATEFUL_TIMEOUT_KEYS = ("tcp", "udp", "icmp", "other", "closing")


class NotCheckable(Exception):
    """An NF type whose config cannot be checked here: not installed, or a
    third-party type without check_config.  Not an error of the config."""


def instance_config(config):
    """The plan instance's "config" for a catalog config path: a YAML/JSON
    file (lb, nat, ratelimit, ddos) becomes {"file": PATH}, which
    nfs.nfconfig reads with FILE:LINE errors; any other file is a rule
    file (firewall, ids): {"rules": PATH}.  None: {}."""
    if config is None:
        return {}
    if isinstance(config, str):
        key = "file" if config.lower().endswith(CONFIG_FILE_SUFFIXES) else "rules"
        return {key: config}
    return dict(config)


# --- per NF type --------------------------------------------------------------

def parse_no_config(nf):
    """forward, monitor and their Python twins take no keys."""
    def parse(config):
        chk = nfconfig.Checker(nf, config)
        chk.take({})
        chk.done()
        return {}
    return parse


def parse_firewall_rules(config):
    """The stateless firewall: (rules, default_allow)."""
    return firewall_rules(dict(config or {}))


def parse_stateful(config):
    """(firewall rules, default_allow, checked own keys)."""
    config = dict(config or {})
    own = {k: config.pop(k) for k in ("timeouts", "max_connections", "stateful") if k in config}
    chk = nfconfig.Checker("firewall-stateful", own)
    v = chk.take({"timeouts": ({}, dict), "max_connections": (65536, nfconfig.positive_int),
                  "stateful": (True, nfconfig.boolean)})
    v["timeouts"] = chk.take({k: (d, nfconfig.positive) for k, d in
                              zip(STATEFUL_TIMEOUT_KEYS, (300, 60, 30, 60, 10))},
                             v["timeouts"] or {}, ("timeouts",))
    chk.done()
    rules, default_allow = firewall_rules(config)
    return rules, default_allow, v


def parse_firewall(config):
    """The `firewall` type: stateful with `stateful: true`, else stateless;
    what nfs.stateful.make_firewall builds from."""
    config = dict(config or {})
    if config.get("stateful"):
        return parse_stateful(config)
    config.pop("stateful", None)
    return parse_firewall_rules(config)


def _ids_vars(value):
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(x, (str, int)) for k, x in value.items()):
        raise ValueError('must be a mapping of variable names to addresses or ports, '
                         'like {"HOME_NET": "[10.0.0.0/8]", "HTTP_PORTS": "[80,8080]"}')
    return value


def parse_ids(config):
    """(own keys checked, rules, rule source) of an ids config."""
    config = dict(config or {})
    chk = nfconfig.Checker("ids", {k: v for k, v in config.items()
                                   if k not in ("rules", "rules_text")})
    v = chk.take({"alerts": (None, str), "flow_timeout": (120, nfconfig.positive),
                  "max_flows": (65536, nfconfig.positive_int), "vars": ({}, _ids_vars)})
    chk.done()
    rules, source = ids_rules(config)
    return v, rules, source


def _is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def _table_size(value):
    value = nfconfig.positive_int(value)
    if not _is_prime(value) or value > 65537 or value < 7:
        raise ValueError(f"must be a prime between 7 and 65537 (Maglev), got {value}")
    return value


def _port(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
        raise ValueError(f"must be a port id 0-65535, got {value!r}")
    return value


LB_MODES = ("proxy",)


def _lb_mode(value):
    if value not in LB_MODES:
        raise ValueError(f"must be {' or '.join(repr(m) for m in LB_MODES)} (replies return "
                         f"through the lb; direct server return is not offered), got {value!r}")
    return value


def _check_backend(chk, i, b):
    spec = {"name": (nfconfig.REQUIRED, str), "ip": (None, nfconfig.ipv4),
            "ip6": (None, nfconfig.ipv6), "mac": (nfconfig.REQUIRED, nfconfig.mac)}
    out = chk.take(spec, b, ("backends", i))
    if "ip" not in b and "ip6" not in b:
        chk.error(["backends", i], "needs an address: ip (IPv4), ip6 (IPv6) or both")
    return out


def parse_lb(config):
    """Checked lb config: (values, [(name, ip or None, ip6 or None, mac
    bytes)]).  A backend has an IPv4 address (`ip`), an IPv6 one (`ip6`) or
    both; IPv4 flows are balanced over the backends with `ip`, IPv6 flows
    over those with `ip6`; `vip` is IPv4, `vip6` IPv6."""
    chk = nfconfig.Checker("lb", config)
    v = chk.take({
        "mode": ("proxy", _lb_mode), "vip": (None, nfconfig.ipv4), "vip6": (None, nfconfig.ipv6),
        "backends": ([], list), "table_size": (65537, _table_size), "out_port": (None, _port),
        "flow_timeout": (300, nfconfig.positive), "max_flows": (65536, nfconfig.positive_int),
    })
    backends, names = [], set()
    for i, b in enumerate(v["backends"] or []):
        if not isinstance(b, dict):
            chk.error(["backends", i], f"must be a mapping {{name, ip, ip6, mac}}, got {b!r}")
            continue
        b = _check_backend(chk, i, b)
        if b["name"] in names:
            chk.error(["backends", i, "name"], f"backend {b['name']!r} is named twice")
        names.add(b["name"])
        backends.append((b["name"], b["ip"], b["ip6"], b["mac"]))
    if len(backends) > MAX_BACKENDS:
        chk.error(["backends"], f"at most {MAX_BACKENDS} backends")
    chk.done()
    return v, backends


def _port_range(value):
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in value)
            or not 1 <= value[0] <= value[1] <= 65535):
        raise ValueError(f"must be [LOW, HIGH] within 1-65535, got {value!r}")
    return value


def _slice(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a slice number, an integer >= 0, got {value!r}")
    return value


def nat_slice(port_range, slices, n):
    """[lo, hi] of slice n (0-based) when `port_range` is cut into `slices`
    equal, disjoint slices (the last ports of an uneven cut stay unused)."""
    lo, hi = port_range
    size = (hi - lo + 1) // slices
    return [lo + n * size, lo + (n + 1) * size - 1]


def nat_worker_ports(port_range, workers):
    """How many of an instance's ports each of its `workers` hands out:
    the instance's range cut again, as the cluster's range is cut among
    instances (nat_slice).  0 when there are fewer ports than workers."""
    lo, hi = port_range
    return (hi - lo + 1) // workers


def nat_worker_range(port_range, workers, worker):
    """[lo, hi] of the ports worker `worker` (0-based) of `workers` hands
    out; the host steers a reply to the worker whose range holds its port
    (host_agent/handoff.pxd)."""
    return nat_slice(port_range, workers, worker)


def parse_nat(config):
    """Checked nat config.  `port_range` is the ports this instance hands
    out: in a cluster, the instance's slice of the catalog's range
    (nat_slice), `slice` its number (for logs and counters) and `slices`
    how many the catalog's range is cut into (the controller's business;
    checked here only against `slice`)."""
    chk = nfconfig.Checker("nat", config)
    v = chk.take({
        "external_ip": (nfconfig.REQUIRED, nfconfig.ipv4),
        "internal": (nfconfig.REQUIRED, nfconfig.ipv4_net),
        "port_range": ([1024, 65535], _port_range),
        "slice": (None, _slice),
        "slices": (None, nfconfig.positive_int),
        "timeouts": ({}, dict),
        "max_mappings": (65536, nfconfig.positive_int),
    })
    timeouts = chk.take({name: (default, nfconfig.positive) for name, default
                         in zip(NAT_PROTO_NAMES, (7440, 300, 60))},
                        v["timeouts"] or {}, ("timeouts",))
    if v["external_ip"] and v["internal"] and \
            ipaddress.IPv4Address(v["external_ip"]) in ipaddress.IPv4Network(v["internal"]):
        chk.error(["external_ip"], f"{v['external_ip']} is inside the internal network {v['internal']}")
    if v["slice"] is not None and v["slices"] is not None and v["slice"] >= v["slices"]:
        chk.error(["slice"], f"slice {v['slice']} does not exist: the range has {v['slices']} "
                             f"slices, numbered from 0")
    chk.done()
    v["timeouts"] = timeouts
    return v


def _limit(chk, values, path):
    return chk.take({"rate": (nfconfig.REQUIRED, nfconfig.positive),
                     "burst": (nfconfig.REQUIRED, nfconfig.positive_int)}, values, path)


def parse_ratelimit(config):
    chk = nfconfig.Checker("ratelimit", config)
    v = chk.take({"rate": (nfconfig.REQUIRED, nfconfig.positive),
                  "burst": (nfconfig.REQUIRED, nfconfig.positive_int),
                  "chains": ({}, dict), "max_sources": (65536, nfconfig.positive_int)})
    chains = {}
    for spi, limit in (v["chains"] or {}).items():
        if isinstance(spi, bool) or not str(spi).isdigit() or not 16 <= int(spi) < 2 ** 20:
            chk.error(["chains", spi], "a chain is named by its SPI, 16 .. 2^20-1")
        elif not isinstance(limit, dict):
            chk.error(["chains", spi], f"must be {{rate, burst}}, got {limit!r}")
        else:
            chains[int(spi)] = _limit(chk, limit, ("chains", str(spi)))
    if len(chains) > MAX_CHAINS:
        chk.error(["chains"], f"at most {MAX_CHAINS} chains")
    chk.done()
    v["chains"] = chains
    return v


def _sketch_seed(value):
    """ddos's `seed`: the secret of its sketch's hash, a 64-bit number."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 64:
        raise ValueError(f"must be an integer 0 .. 2^64-1, got {value!r}")
    return value


def parse_ddos(config):
    chk = nfconfig.Checker("ddos", config)
    v = chk.take({"window": (1.0, nfconfig.positive), "syn_threshold": (200, nfconfig.positive_int),
                  "packet_threshold": (100000, nfconfig.positive_int), "hold": (10, nfconfig.positive),
                  "depth": (4, nfconfig.positive_int), "width": (8192, nfconfig.positive_int),
                  "max_blocked": (65536, nfconfig.positive_int), "seed": (None, _sketch_seed)})
    if v["depth"] > 16:
        chk.error(["depth"], f"at most 16 rows, got {v['depth']}")
    chk.done()
    return v


# The built-in NF types (setup.cfg, onvm.nfs) and the parser each one's
# constructor calls.
BUILTIN = {
    "forward": parse_no_config("forward"),
    "monitor": parse_no_config("monitor"),
    "forward-py": parse_no_config("forward-py"),
    "monitor-py": parse_no_config("monitor-py"),
    "firewall": parse_firewall,
    "firewall-stateful": parse_stateful,
    "ids": parse_ids,
    "lb": parse_lb,
    "nat": parse_nat,
    "ratelimit": parse_ratelimit,
    "ddos": parse_ddos,
}


def _resolved(config, base_dir):
    """Relative file paths of a config taken from `base_dir`."""
    if not base_dir:
        return config
    return {k: (os.path.join(base_dir, v) if k in ("rules", "file") and isinstance(v, str)
                and not os.path.isabs(v) else v)
            for k, v in config.items()}


def check_config(nf_type, config, base_dir=None):
    """The parsed config of NF type `nf_type`, checked as its constructor
    checks it; raises NFConfigError (every error, with its place), or
    NotCheckable for a type this cannot check.  `base_dir`: where relative
    file paths of the config are taken from (else the working directory,
    as an agent does)."""
    config = _resolved(dict(config or {}), base_dir)
    if nf_type in BUILTIN:
        return BUILTIN[nf_type](config)
    eps = nf_types()
    if nf_type not in eps:
        raise NotCheckable(f"NF type {nf_type!r} is not installed here "
                           f"(installed: {', '.join(sorted(eps)) or 'none'})")
    target = eps[nf_type].load()
    check = getattr(target, "check_config", None)
    if check is None:
        raise NotCheckable(f"NF type {nf_type!r} ({eps[nf_type].value}) offers no "
                           f"check_config")
    return check(config)
