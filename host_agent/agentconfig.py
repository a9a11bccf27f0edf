"""`onvm agent --config FILE`: a real server's agent settings in one YAML
file, checked before anything starts, turned into the agent's options and
DPDK EAL arguments.

    # /etc/onvm/agent.yaml
    host: h1                        # the topology's host name
    store:                          # or `plan: FILE` (no controller)
      endpoints: [https://10.0.0.11:2379, https://10.0.0.12:2379]
      ca: /etc/onvm/tls/ca.crt      # https etcd: its CA, this host's
      cert: /etc/onvm/tls/h1.crt    # client certificate and key
      key: /etc/onvm/tls/h1.key
      user: root                    # etcd auth: user and the file with its
      password_file: /etc/onvm/etcd-password   # password (mode 0600)
    nic:
      pci: "0000:03:00.0"           # bound to vfio-pci (dpdk-devbind.py)
      # vdev: net_af_packet0,iface=eth1   # instead: a virtual device, --no-pci
    cores: "2-3"                    # EAL -l: the first runs the manager loop, each NF
                                    # process gets one of the others (host_agent.lcores)
    hugepages_mb: 1024              # EAL --socket-mem; 0: --no-huge (tests only)
    metrics_port: 9100              # Prometheus endpoint, 0: none
    metrics_addr: 192.0.2.101       # its address (default 127.0.0.1); then:
    metrics_cert: /etc/onvm/tls/h1-metrics.crt    # HTTPS
    metrics_key: /etc/onvm/tls/h1-metrics.key
    metrics_token_file: /etc/onvm/metrics-token   # bearer tokens, mode 0600
    idle_us: 0                      # sleep when idle (0: poll, line rate)
    eal: []                         # more EAL arguments, passed as they are

Every problem is reported at once as FILE:LINE: key: message (a
ConfigError, a contracts.validate.ValidationError): unknown keys, wrong
types, unreadable TLS files, a password file open to every user, a PCI NIC that does not exist or is not bound
to a DPDK driver.

Not here: running the agent (host_agent.agent), the store client's use of
the TLS files and password (contracts.store reads $ONVM_STORE_CA/CERT/KEY/
USER/PASSWORD_FILE).
"""
from __future__ import annotations

import dataclasses
import os
import re

import yaml

from contracts.secretfile import (MIN_TOKEN_CHARS, SecretFileError, read_secret_file,
                                  read_tokens)
from contracts.store import AUTH_ENV, TLS_ENV
from contracts.tlsfiles import TLSFileError, check_ca, check_pair
from contracts.validate import Errors, ValidationError
from host_agent import lcores

DPDK_DRIVERS = ("vfio-pci", "uio_pci_generic", "igb_uio")
PCI_RE = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
KEYS = ("host", "store", "plan", "nic", "cores", "hugepages_mb", "metrics_port",
        "idle_us", "eal", "metrics_addr", "metrics_cert", "metrics_key", "metrics_token_file")
METRICS_KEYS = ("metrics_addr", "metrics_cert", "metrics_key", "metrics_token_file")
STORE_KEYS = ("endpoints", "ca", "cert", "key", "user", "password_file")
NIC_KEYS = ("pci", "vdev")


class ConfigError(ValidationError):
    """An agent config file that cannot be used; one `FILE:LINE: ...` a line."""


@dataclasses.dataclass
class AgentConfig:
    host: str
    store: str = None              # comma-separated endpoints, as --store takes
    plan: str = None
    tls_env: dict = dataclasses.field(default_factory=dict)   # ONVM_STORE_* (TLS, user)
    eal: list = dataclasses.field(default_factory=list)
    metrics_port: int = 9100
    metrics: dict = dataclasses.field(default_factory=dict)   # metrics_addr/cert/key/token_file
    idle_us: int = 0


def _key_lines(node, path=(), out=None):
    """{key path tuple: line} of every mapping key under a composed YAML
    node; duplicate keys as ("duplicate", line, first line) entries."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = path + (key_node.value,)
            line = key_node.start_mark.line + 1
            if key in out:
                out.setdefault("duplicates", []).append((key, line, out[key]))
            out.setdefault(key, line)
            _key_lines(value_node, key, out)
    return out


class _Checker:
    def __init__(self, path, lines, sysfs):
        self.path, self.lines, self.sysfs = path, lines, sysfs
        self.errors = Errors(ConfigError)

    def where(self, *key):
        while key and key not in self.lines:
            key = key[:-1]
        return f"{self.path}:{self.lines.get(key, 1)}"

    def fail(self, key, message):
        self.errors.add(self.where(*key), f"{'.'.join(key)}: {message}")

    def mapping(self, raw, key, allowed):
        if not isinstance(raw, dict):
            self.fail(key, f"must be a mapping with {', '.join(allowed)}, not {raw!r}")
            return {}
        for k in raw:
            if k not in allowed:
                self.fail(key + (k,), f"unknown key; known: {', '.join(allowed)}")
        return raw

    def integer(self, raw, key, low, high):
        if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
            self.fail(key, f"must be a whole number from {low} to {high}, not {raw!r}")
            return None
        return raw

    def readable(self, raw, key):
        if not isinstance(raw, str) or not os.access(raw, os.R_OK):
            self.fail(key, f"cannot read {raw!r}")

    def store(self, raw):
        store = self.mapping(raw, ("store",), STORE_KEYS)
        endpoints = store.get("endpoints")
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not isinstance(endpoints, list) or not endpoints or not all(
                isinstance(e, str) and re.match(r"^https?://[^/,\s]+:\d+/?$", e)
                for e in endpoints):
            self.fail(("store", "endpoints"), "must list etcd URLs like "
                      f"https://10.0.0.11:2379, not {endpoints!r}")
            endpoints = []
        files = {k: store.get(k) for k in ("ca", "cert", "key")}
        for k, value in files.items():
            if value is not None:
                self.readable(value, ("store", k))
        if (files["cert"] is None) != (files["key"] is None):
            self.fail(("store", "cert" if files["cert"] is None else "key"),
                      "a client certificate and its key go together")
        elif all(v is None or os.access(v, os.R_OK) for v in files.values()):
            self.certificates(files)
        if any(files.values()) and any(e.startswith("http://") for e in endpoints):
            self.fail(("store", "endpoints"), "TLS files are given: use https:// URLs")
        tls_env = {env: files[k] for env, k in zip(TLS_ENV, ("ca", "cert", "key"))
                   if files[k] is not None}
        tls_env.update(self.store_auth(store))
        return ",".join(e.rstrip("/") for e in endpoints), tls_env

    def store_auth(self, store):
        """$ONVM_STORE_USER/PASSWORD_FILE of store.user and store.password_file."""
        user, password_file = store.get("user"), store.get("password_file")
        if (user is None) != (password_file is None):
            given, missing = ("user", "password_file") if password_file is None \
                else ("password_file", "user")
            self.fail(("store", given), f"an etcd user and its password_file go "
                                        f"together: {missing} is missing")
            return {}
        if user is None:
            return {}
        if not isinstance(user, str) or not user:
            self.fail(("store", "user"), f"must be an etcd user name, not {user!r}")
        try:
            read_secret_file(str(password_file), "password_file", "password file")
        except SecretFileError as err:
            self.fail(("store", "password_file"), str(err))
        return dict(zip(AUTH_ENV, (str(user), str(password_file))))

    def metrics(self, raw):
        """The metrics_addr/cert/key/token_file keys given, checked."""
        given = {k: raw[k] for k in METRICS_KEYS if k in raw}
        for k, value in given.items():
            if not isinstance(value, str) or not value:
                self.fail((k,), f"must be a string, not {value!r}")
                return {}
        if ("metrics_cert" in given) != ("metrics_key" in given):
            self.fail(("metrics_cert" if "metrics_cert" in given else "metrics_key",),
                      "metrics_cert and metrics_key go together")
        elif "metrics_cert" in given:
            try:
                check_pair(given["metrics_cert"], given["metrics_key"], "certificate", "key")
            except TLSFileError as err:
                self.fail(("metrics_key" if "not the key" in str(err) else "metrics_cert",),
                          str(err))
        if "metrics_token_file" in given:
            try:
                read_tokens(given["metrics_token_file"], "token file", MIN_TOKEN_CHARS,
                            several=True)
            except SecretFileError as err:
                self.fail(("metrics_token_file",), str(err))
        return given

    def certificates(self, files):
        """Certificate valid now and with its key, a CA file with a CA."""
        try:
            if files["cert"] is not None:
                check_pair(files["cert"], files["key"], "certificate", "key")
        except TLSFileError as err:
            self.fail(("store", "key" if "not the key" in str(err) else "cert"), str(err))
        try:
            if files["ca"] is not None:
                check_ca(files["ca"], "CA file")
        except TLSFileError as err:
            self.fail(("store", "ca"), str(err))

    def nic(self, raw):
        nic = self.mapping(raw, ("nic",), NIC_KEYS)
        if nic and len([k for k in NIC_KEYS if k in nic]) != 1:
            self.fail(("nic",), "give exactly one of pci (a NIC bound to DPDK) or vdev")
            return []
        if "vdev" in nic:
            if not isinstance(nic["vdev"], str) or not nic["vdev"]:
                self.fail(("nic", "vdev"), f"must be a DPDK vdev string like "
                          f"net_af_packet0,iface=eth1, not {nic['vdev']!r}")
            return ["--vdev", str(nic["vdev"]), "--no-pci"]
        if "pci" not in nic:
            return []
        return ["-a", self.pci(nic["pci"])]

    def pci(self, address):
        key = ("nic", "pci")
        if not isinstance(address, str) or not PCI_RE.match(address):
            self.fail(key, f"must be a PCI address like \"0000:03:00.0\" (quoted), "
                           f"not {address!r}")
            return str(address)
        device = os.path.join(self.sysfs, "bus", "pci", "devices", address.lower())
        if not os.path.isdir(device):
            self.fail(key, f"no PCI device {address} on this machine (lspci -D lists them)")
            return address
        driver = os.path.basename(os.path.realpath(os.path.join(device, "driver"))) \
            if os.path.exists(os.path.join(device, "driver")) else None
        if driver not in DPDK_DRIVERS:
            self.fail(key, f"{address} is bound to {driver or 'no driver'}, not to a DPDK "
                           f"driver ({', '.join(DPDK_DRIVERS)}); run: dpdk-devbind.py "
                           f"--bind=vfio-pci {address}")
        return address


def parse_config(text, path, sysfs="/sys"):
    """AgentConfig of a config file's text; ConfigError with every problem."""
    errors = Errors(ConfigError)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        errors.add(f"{path}:{line}", f"not YAML: {getattr(err, 'problem', None) or err}")
        errors.raise_if_any()
    lines = _key_lines(node)
    c = _Checker(path, lines, sysfs)
    for key, line, first in lines.pop("duplicates", []):
        c.errors.add(f"{path}:{line}", f"{'.'.join(key)}: duplicate key (first at line {first})")
    if not isinstance(raw, dict):
        errors.add(f"{path}:1", f"must be a mapping of keys ({', '.join(KEYS)}), "
                                f"not {type(raw).__name__}")
        errors.raise_if_any()
    c.mapping(raw, (), KEYS)
    host = raw.get("host")
    if not isinstance(host, str) or not host:
        c.fail(("host",), f"must be the topology's name of this host, not {host!r}")
    config = AgentConfig(host=host)
    if ("store" in raw) == ("plan" in raw):
        c.fail(("store",), "give exactly one of store (etcd endpoints) or plan (a file)")
    elif "store" in raw:
        config.store, config.tls_env = c.store(raw["store"])
    else:
        c.readable(raw["plan"], ("plan",))
        config.plan = raw["plan"]
    eal = c.nic(raw.get("nic", {}))
    cores = raw.get("cores")
    if cores is not None:
        cores = ",".join(map(str, cores)) if isinstance(cores, list) else str(cores)
        try:
            lcores.parse_core_list(cores)
            eal += ["-l", cores]
        except lcores.CoresError:
            c.fail(("cores",), f"must be an EAL core list like \"2-3\" or [2, 3], "
                               f"not {raw['cores']!r}")
    if "hugepages_mb" in raw:
        mb = c.integer(raw["hugepages_mb"], ("hugepages_mb",), 0, 1 << 20)
        if mb is not None:
            eal += ["--socket-mem", str(mb)] if mb else ["--no-huge", "-m", "256"]
    if "metrics_port" in raw:
        config.metrics_port = c.integer(raw["metrics_port"], ("metrics_port",), 0, 65535)
    config.metrics = c.metrics(raw)
    if "idle_us" in raw:
        config.idle_us = c.integer(raw["idle_us"], ("idle_us",), 0, 1_000_000)
    extra = raw.get("eal", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        c.fail(("eal",), f"must be a list of EAL arguments (strings), not {extra!r}")
        extra = []
    config.eal = eal + extra
    c.errors.raise_if_any()
    return config


def load_config(path, sysfs="/sys"):
    """AgentConfig of a file; ConfigError naming the file when unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror}"]) from None
    return parse_config(text, path, sysfs)


def cli_agent(args):
    """`onvm agent`: with --config, the file's settings (flags given as
    well win: --host, --store, --plan, --metrics-*, --idle-us; EAL
    arguments after `--` come after the file's); then host_agent.agent."""
    import sys
    from host_agent.agent import cli_agent as run_agent
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as err:
            print(f"onvm agent: {err}", file=sys.stderr)
            return 1
        args.host = args.host or config.host
        if not (args.store or args.plan):
            args.store, args.plan = config.store, config.plan
        args.metrics_port = config.metrics_port if args.metrics_port is None \
            else args.metrics_port
        args.idle_us = config.idle_us if args.idle_us is None else args.idle_us
        for key, value in config.metrics.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
        args.eal = config.eal + list(args.eal)
        os.environ.update(config.tls_env)      # read by contracts.store.open_store
    if not args.host or not (args.store or args.plan):
        print("onvm agent: give --config FILE, or --host NAME and --store URL or "
              "--plan FILE", file=sys.stderr)
        return 2
    args.metrics_port = 9100 if args.metrics_port is None else args.metrics_port
    args.idle_us = 0 if args.idle_us is None else args.idle_us
    return run_agent(args)
