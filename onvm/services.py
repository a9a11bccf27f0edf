"""Real services that tests and `onvm emulate` start, and always stop: a
private etcd (one member, or a cluster of several on their own ports) and
a private Open vSwitch (ovsdb-server + ovs-vswitchd).

Each service lives in its own temporary directory with its own ports or
sockets, so several can run beside each other and beside a system OVS or etcd,
which are never touched.  Stopping kills only the processes this module
started (by their pid) and removes only bridges whose name has the
instance's prefix.

This module does not configure anything onvm-specific: it gives a running
store and a running switch daemon, nothing more.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from onvm import procs
from onvm.netns import enter_private_netns  # noqa: F401  (tests/conftest.py calls it here)

LOG = logging.getLogger(__name__)

ETCD_BIN = "/usr/bin/etcd"
OVSDB_SERVER_BIN = "/usr/sbin/ovsdb-server"
OVS_VSWITCHD_BIN = "/usr/sbin/ovs-vswitchd"
OVSDB_TOOL_BIN = "/usr/bin/ovsdb-tool"
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
OVS_PKGDATADIR = "/usr/share/openvswitch"
SYSTEM_OVS_SOCKET = "/var/run/openvswitch/db.sock"


def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class GaveUp(RuntimeError):
    """Raised by a `wait_for` predicate when waiting longer is pointless."""


def wait_for(predicate, timeout, what, interval=0.05):
    """Call `predicate` until it returns a true value, which is returned.

    Raises TimeoutError naming `what` after `timeout` seconds; the last
    exception the predicate raised, if any, is part of the message.  A
    predicate raising GaveUp (say, the process died) ends the wait at once."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except GaveUp:
            raise
        except Exception as err:     # the predicate probes; failures are expected
            last_error = err
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"{what}: not done after {timeout:g} s{detail}")
        time.sleep(interval)


def netdev_datapath_busy():
    """True when a userspace OVS datapath already exists in this namespace."""
    return os.path.exists("/sys/class/net/ovs-netdev")


# How every etcd this project starts keeps its store from filling up
# (docs/deploy.md, "etcd"): history older than ETCD_RETENTION is compacted
# away, and the database may not grow past ETCD_QUOTA_BYTES (then etcd
# raises a NOSPACE alarm, which contracts.store reports as StoreFull).
ETCD_RETENTION = "5m"
ETCD_QUOTA_BYTES = 256 * 1024 * 1024


def etcd_command(name, data_dir, client_url, peer_url, initial_cluster, token,
                 quota_bytes=ETCD_QUOTA_BYTES, retention=ETCD_RETENTION, binary=ETCD_BIN):
    """argv of one etcd member on loopback URLs, with this project's timings,
    compaction and quota."""
    return [binary, "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", token,
            # etcd's shortest lease is 1.5 election timeouts: with 0.5 s,
            # 1 s leases (DESIGN's host TTL) are not stretched to 2 s.
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--auto-compaction-mode", "periodic", "--auto-compaction-retention", retention,
            "--quota-backend-bytes", str(int(quota_bytes)),
            "--log-level", "warn", "--logger", "zap"]


class EtcdCluster:
    """`size` etcd members on free 127.0.0.1 ports, each with its own data
    dir and log in one temporary directory, one `--initial-cluster`.

    `url` lists every member's client URL, comma-separated, in member order
    (the store client talks to the first one first).  Members can be killed
    (SIGKILL), paused (SIGSTOP), resumed and started again on their data.
    Use as a context manager, or call `stop()`.  `tls`: an
    onvm.certs.RunCredentials with TLS files: https for clients and peers,
    client certificates required.  `auth`: a contracts.store.StoreAuth
    whose user (root) is created with its password, given the root role,
    and etcd's auth enabled (over the v3 HTTP API) once the members are up;
    `auth_token_ttl`: seconds an unused auth token lasts (etcd's
    --auth-token-ttl, default 300)."""

    def __init__(self, size=3, workdir=None, quota_bytes=ETCD_QUOTA_BYTES,
                 binary=ETCD_BIN, timeout=20.0, tls=None, auth=None, auth_token_ttl=None):
        if not os.path.exists(binary):
            raise FileNotFoundError(
                f"etcd not found at {binary}; install it with "
                "`apt-get install etcd-server`")
        self.dir = tempfile.mkdtemp(prefix="onvm-etcd-", dir=workdir)
        self.client_ports = [free_port() for _ in range(size)]
        self.peer_ports = [free_port() for _ in range(size)]
        self.names = [f"m{i}" for i in range(size)]
        self.procs = [None] * size
        self.quota_bytes = quota_bytes
        self._binary, self._timeout = binary, timeout
        self.tls, self.scheme = tls, "https" if tls else "http"
        self.auth, self.auth_token_ttl = auth, auth_token_ttl
        self._initial = ",".join(f"{n}={self.scheme}://127.0.0.1:{p}"
                                 for n, p in zip(self.names, self.peer_ports))
        try:
            for i in range(size):
                self._spawn(i)
            for i in range(size):
                self._wait_healthy(i)
            if auth is not None:
                self.enable_auth()
        except BaseException:
            self.stop()
            raise
        LOG.info("etcd up at %s (pids %s, data in %s)", self.url,
                 [p.pid for p in self.procs], self.dir)

    def member_url(self, i):
        return f"{self.scheme}://127.0.0.1:{self.client_ports[i]}"

    @property
    def url(self):
        return ",".join(self.member_url(i) for i in range(len(self.names)))

    def log_of(self, i):
        return os.path.join(self.dir, f"{self.names[i]}.log")

    def _spawn(self, i):
        cmd = etcd_command(self.names[i], os.path.join(self.dir, self.names[i]),
                           self.member_url(i), f"{self.scheme}://127.0.0.1:{self.peer_ports[i]}",
                           self._initial, os.path.basename(self.dir),
                           quota_bytes=self.quota_bytes, binary=self._binary)
        cmd += self.tls.etcd_args() if self.tls else []
        if self.auth_token_ttl is not None:
            cmd += ["--auth-token-ttl", str(int(self.auth_token_ttl))]
        with open(self.log_of(i), "ab") as log:
            self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)

    def _wait_healthy(self, i):
        try:
            wait_for(lambda: self.healthy(i), self._timeout,
                     f"etcd member {self.names[i]} at {self.member_url(i)}")
        except (TimeoutError, GaveUp) as err:
            raise RuntimeError(
                f"{err}; exit code {self.procs[i].poll()}; "
                f"tail of {self.log_of(i)}:\n{procs.tail(self.log_of(i))}") from None

    def _v3(self, path, body):
        """POST one v3 HTTP API call to the first member; its JSON answer."""
        context = self.tls.client_context() if self.tls else None
        req = urllib.request.Request(self.member_url(0) + "/v3" + path,
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self._timeout, context=context) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"etcd {path} at {self.member_url(0)}: HTTP {err.code}: "
                               f"{err.read()[:200].decode(errors='replace')}") from None

    def enable_auth(self):
        """User `auth.user` with the password of `auth.password_file` and
        the root role; then etcd's auth on (what `etcdctl user add root`,
        `etcdctl user grant-role root root`, `etcdctl auth enable` do)."""
        from contracts.store_etcd import read_password
        user = self.auth.user
        if user != "root":
            raise ValueError(f"etcd auth: the first user must be root, not {user!r}")
        self._v3("/auth/user/add", {"name": user, "password": read_password(self.auth)})
        self._v3("/auth/role/add", {"name": "root"})
        self._v3("/auth/user/grant", {"user": user, "role": "root"})
        self._v3("/auth/enable", {})
        LOG.info("etcd auth enabled at %s: user %s", self.url, user)

    def healthy(self, i):
        if self.procs[i].poll() is not None:
            raise GaveUp(f"etcd member {self.names[i]} exited with code "
                         f"{self.procs[i].returncode}")
        context = self.tls.client_context() if self.tls else None
        with urllib.request.urlopen(self.member_url(i) + "/health", timeout=1,
                                    context=context) as resp:
            return json.load(resp).get("health") == "true"

    def kill(self, i):
        """The member dies at once (SIGKILL); the others keep a quorum."""
        procs.kill(self.procs[i])

    def pause(self, i):
        self.procs[i].send_signal(signal.SIGSTOP)

    def resume(self, i):
        self.procs[i].send_signal(signal.SIGCONT)

    def start(self, i):
        """Start a killed member again on its ports and data."""
        self._spawn(i)
        self._wait_healthy(i)

    def stop(self):
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)    # a paused member must die too
            procs.stop(proc, f"etcd member {self.names[i]}")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class EtcdServer(EtcdCluster):
    """A single-member etcd (what tests and `onvm emulate` use unless they
    ask for a cluster): `url` is its client URL, `proc` its process."""

    def __init__(self, workdir=None, binary=ETCD_BIN, timeout=15.0,
                 quota_bytes=ETCD_QUOTA_BYTES, tls=None, auth=None, auth_token_ttl=None):
        super().__init__(1, workdir=workdir, quota_bytes=quota_bytes, binary=binary,
                         timeout=timeout, tls=tls, auth=auth, auth_token_ttl=auth_token_ttl)

    @property
    def proc(self):
        return self.procs[0]

    @property
    def client_port(self):
        return self.client_ports[0]

    @property
    def log_path(self):
        return self.log_of(0)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def restart(self, down_s=0.0):
        """Kill etcd and start it again on the same ports and data (its keys
        stay; leases run on), after `down_s` seconds of outage."""
        self.kill(0)
        time.sleep(down_s)
        self.start(0)


class OvsError(GaveUp):
    """An OVS command or daemon failed; the message has the command and output."""


class OvsServer:
    """A private Open vSwitch: its own database, ovsdb-server and ovs-vswitchd.

    `env` holds OVS_RUNDIR/OVS_DBDIR/OVS_LOGDIR/OVS_PKGDATADIR; with it
    applied (pass `env=` to subprocesses, or `activate()` for this process,
    which Mininet's OVSSwitch needs since it shells out to ovs-vsctl), the
    ovs-* tools talk to this instance and not to a system one.  Bridges must
    use datapath_type=netdev (no kernel module here); `add_bridge` does.
    `stop()` deletes the bridges whose name starts with `prefix`, then ends
    both daemons and removes the directory."""

    def __init__(self, prefix, workdir=None, timeout=15.0):
        for binary in (OVSDB_SERVER_BIN, OVS_VSWITCHD_BIN, OVSDB_TOOL_BIN):
            if not os.path.exists(binary):
                raise FileNotFoundError(
                    f"{binary} not found; install it with "
                    "`apt-get install openvswitch-switch`")
        if netdev_datapath_busy():
            raise OvsError(
                "another userspace OVS datapath (interface ovs-netdev) runs in "
                "this network namespace; only one fits per namespace: stop it, "
                "or call onvm.netns.enter_private_netns() first")
        self.prefix = prefix
        # Unix socket paths are limited to 107 bytes: keep the dir short.
        self.dir = tempfile.mkdtemp(prefix="onvm-ovs-", dir=workdir or "/tmp")
        self.env = {"OVS_RUNDIR": self.dir, "OVS_DBDIR": self.dir,
                    "OVS_LOGDIR": self.dir, "OVS_PKGDATADIR": OVS_PKGDATADIR,
                    "OVS_SYSCONFDIR": self.dir}
        self.db_socket = os.path.join(self.dir, "db.sock")
        self._saved_environ = None
        self.ovsdb = self.vswitchd = None
        if os.path.exists(SYSTEM_OVS_SOCKET):
            LOG.info("a system OVS database listens at %s; this private one "
                     "in %s leaves it alone", SYSTEM_OVS_SOCKET, self.dir)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _full_env(self):
        env = dict(os.environ)
        env.update(self.env)
        return env

    def _start(self, timeout):
        self._run([OVSDB_TOOL_BIN, "create", self.db_path, OVS_SCHEMA])
        self._start_ovsdb(timeout)
        self.vsctl("--no-wait", "init")
        self._start_vswitchd(timeout)
        LOG.info("private OVS up in %s (ovsdb-server pid %d, ovs-vswitchd pid %d)",
                 self.dir, self.ovsdb.pid, self.vswitchd.pid)

    @property
    def db_path(self):
        return os.path.join(self.dir, "conf.db")

    def _start_ovsdb(self, timeout):
        self.ovsdb = self._spawn("ovsdb-server", [
            OVSDB_SERVER_BIN, self.db_path, f"--remote=punix:{self.db_socket}",
            "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
            f"--pidfile={self.dir}/ovsdb-server.pid",
            f"--unixctl={self.dir}/ovsdb-server.ctl",
            f"--log-file={self.dir}/ovsdb-server.log", "-vconsole:off"])
        # The socket file may be left from a previous run of the server:
        # ready means it answers.
        wait_for(lambda: self._alive(self.ovsdb, "ovsdb-server")
                 and self._db_answers(), timeout,
                 f"ovsdb-server socket {self.db_socket}")

    def _db_answers(self):
        res = subprocess.run(["ovsdb-client", "--timeout=2", "list-dbs",
                              f"unix:{self.db_socket}"], capture_output=True,
                             env=self._full_env(), timeout=10)
        return res.returncode == 0

    def _start_vswitchd(self, timeout):
        ctl = os.path.join(self.dir, "ovs-vswitchd.ctl")
        self.vswitchd = self._spawn("ovs-vswitchd", [
            OVS_VSWITCHD_BIN, f"unix:{self.db_socket}",
            f"--pidfile={self.dir}/ovs-vswitchd.pid", f"--unixctl={ctl}",
            f"--log-file={self.dir}/ovs-vswitchd.log", "-vconsole:off"])
        # vswitchd is ready once it answers on its control socket and has
        # applied a configuration change (`init` without --no-wait waits).
        wait_for(lambda: self._alive(self.vswitchd, "ovs-vswitchd")
                 and os.path.exists(ctl), timeout,
                 f"ovs-vswitchd control socket in {self.dir}")
        self.vsctl(f"--timeout={int(timeout)}", "init")
        # ovs-ofctl reaches a bridge through its management socket, which
        # may come a little after the configuration is applied.
        sockets = [os.path.join(self.dir, b + ".mgmt") for b in self.bridges()]
        wait_for(lambda: self._alive(self.vswitchd, "ovs-vswitchd")
                 and all(os.path.exists(s) for s in sockets), timeout,
                 f"management sockets of the bridges in {self.dir}")

    def _spawn(self, name, cmd):
        log = open(os.path.join(self.dir, name + ".out"), "wb")
        try:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self._full_env())
        finally:
            log.close()

    def _alive(self, proc, name):
        if proc.poll() is not None:
            log = os.path.join(self.dir, name + ".log")
            raise OvsError(f"{name} exited with code {proc.returncode}; tail of "
                           f"{log}:\n{procs.tail(log)}{procs.tail(log[:-4] + '.out')}")
        return True

    def _run(self, cmd, check=True):
        res = subprocess.run(cmd, capture_output=True, text=True,
                             env=self._full_env(), timeout=30)
        if check and res.returncode != 0:
            raise OvsError(f"`{' '.join(cmd)}` failed with code {res.returncode}: "
                           f"{res.stderr.strip() or res.stdout.strip()}")
        return res.stdout

    def vsctl(self, *args, check=True):
        """Run ovs-vsctl against this instance; returns its stdout."""
        return self._run(["ovs-vsctl", f"--db=unix:{self.db_socket}", *args],
                         check=check)

    def ofctl(self, *args, check=True):
        """Run ovs-ofctl (OpenFlow 1.3) against this instance's bridges."""
        return self._run(["ovs-ofctl", "-O", "OpenFlow13", *args], check=check)

    def appctl(self, *args, target="ovs-vswitchd", check=True):
        ctl = os.path.join(self.dir, target + ".ctl")
        return self._run(["ovs-appctl", "-t", ctl, *args], check=check)

    @property
    def pids(self):
        """(ovsdb-server pid, ovs-vswitchd pid): they change on restart."""
        return self.ovsdb.pid, self.vswitchd.pid

    def restart(self, keep_flows=False, ovsdb=False, timeout=15.0):
        """Stop ovs-vswitchd (`ovs-appctl exit`, as ovs-ctl does) and start it
        again on the same run dir, database and options; with `ovsdb`, the
        database server too (in between, as `ovs-ctl restart` does).

        The database keeps bridges, ports and controller targets, so the
        switches come back and reconnect to their controllers.  The
        userspace datapath keeps no flow: they are lost, unless `keep_flows`,
        which does what `ovs-ctl restart` (systemctl restart
        openvswitch-switch) does: save every bridge's flows and groups, start
        vswitchd with other_config:flow-restore-wait=true (it holds off its
        controllers), put them back, then clear the flag.  Only bridges
        without a controller keep them: OVS 3.1 flushes a bridge's flows when
        it goes from no controller to one, which clearing the flag does."""
        before = self.pids
        saved = self._save_flows() if keep_flows else {}
        self._stop_vswitchd(cleanup=False)
        if ovsdb:
            procs.stop(self.ovsdb, "ovsdb-server")
            self._start_ovsdb(timeout)
        if keep_flows:
            self.vsctl("--no-wait", "set", "Open_vSwitch", ".",
                       "other_config:flow-restore-wait=true")
        self._start_vswitchd(timeout)
        if keep_flows:
            self._restore_flows(saved)
            self.vsctl(f"--timeout={int(timeout)}", "remove", "Open_vSwitch", ".",
                       "other_config", "flow-restore-wait")
        LOG.info("private OVS in %s restarted (%s): ovsdb-server pid %d -> %d, "
                 "ovs-vswitchd pid %d -> %d; flows %s", self.dir,
                 "both daemons" if ovsdb else "ovs-vswitchd only", before[0],
                 self.ovsdb.pid, before[1], self.vswitchd.pid,
                 f"of {len(saved)} bridges restored" if keep_flows else "lost")

    def _save_flows(self):
        """{bridge: (groups file, flows file)} as ovs-save writes them."""
        saved = {}
        for bridge in self.bridges():
            groups = os.path.join(self.dir, f"{bridge}.groups.dump")
            flows = os.path.join(self.dir, f"{bridge}.flows.dump")
            with open(groups, "w") as f:
                f.writelines(line + "\n" for line in
                             self.ofctl("dump-groups", bridge).splitlines()
                             if line.strip() and not line.startswith("OFPST_"))
            with open(flows, "w") as f:
                f.writelines(line + "\n" for line in self.ofctl(
                    "dump-flows", "--no-names", "--no-stats", bridge).splitlines()
                    if line.strip() and not line.startswith("OFPST_"))
            saved[bridge] = (groups, flows)
        return saved

    def _restore_flows(self, saved):
        for bridge, (groups, flows) in saved.items():
            self.ofctl("add-groups", bridge, groups)
            self.ofctl("replace-flows", bridge, flows)
            os.unlink(groups)
            os.unlink(flows)

    def _stop_vswitchd(self, cleanup):
        """End ovs-vswitchd by `ovs-appctl exit`; kill it if that fails.
        `cleanup` also removes its datapaths and internal ports' taps."""
        if self.vswitchd is None or self.vswitchd.poll() is not None:
            return
        try:
            self.appctl("exit", *(["--cleanup"] if cleanup else []), check=False)
            self.vswitchd.wait(5.0)
        except (OvsError, subprocess.TimeoutExpired) as err:
            LOG.warning("private OVS in %s: clean exit failed (%s); killing",
                        self.dir, err)
        procs.stop(self.vswitchd, "ovs-vswitchd")

    def add_bridge(self, name, dpid=None, controller=None, fail_mode="secure"):
        """Create a userspace (netdev) bridge; the name must have our prefix."""
        if not name.startswith(self.prefix):
            raise ValueError(f"bridge {name!r} lacks this OVS's prefix "
                             f"{self.prefix!r}; stop() would not remove it")
        args = ["--may-exist", "add-br", name, "--", "set", "Bridge", name,
                "datapath_type=netdev", "protocols=OpenFlow13",
                f"fail_mode={fail_mode}"]
        if dpid is not None:
            args.append(f"other_config:datapath-id={dpid:016x}")
        self.vsctl(*args)
        if controller:
            self.vsctl("set-controller", name, controller)
        return name

    def bridges(self):
        """Names of this instance's bridges that carry our prefix."""
        out = self.vsctl("--timeout=5", "list-br", check=False)
        return [b for b in out.split() if b.startswith(self.prefix)]

    def activate(self):
        """Point this process's ovs-* commands (and Mininet) at this OVS."""
        if self._saved_environ is None:
            self._saved_environ = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)

    def deactivate(self):
        if self._saved_environ is None:
            return
        for key, value in self._saved_environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_environ = None

    def stop(self):
        """Remove our bridges, end both daemons, remove the directory."""
        self.deactivate()
        try:
            if self.vswitchd and self.vswitchd.poll() is None:
                for bridge in self.bridges():
                    self.vsctl("--timeout=5", "--if-exists", "del-br", bridge,
                               check=False)
        except subprocess.TimeoutExpired as err:
            LOG.warning("private OVS in %s: deleting bridges timed out (%s)",
                        self.dir, err)
        # exit --cleanup removes datapaths and the tap devices of internal
        # ports it made; SIGTERM would leave them behind.
        self._stop_vswitchd(cleanup=True)
        procs.stop(self.ovsdb, "ovsdb-server")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
