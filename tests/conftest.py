"""Shared pytest fixtures: a real etcd and a real (private, userspace) Open
vSwitch, started for the tests that ask for them and always stopped.

As root, the whole test run moves into a private network namespace first
(`onvm.services.enter_private_netns`): OVS's userspace datapath allows one
per namespace, and a private one keeps the run's ports, bridges and
interfaces away from any other run on the machine.  Set
ONVM_TEST_SHARED_NETNS=1 to stay in the caller's namespace.

A fixture skips its tests only when the program it needs is not installed,
and says which; any other start-up failure is an error.
"""
import contextlib
import os
import shutil
import sys
import tempfile
# The standard library's networking modules, loaded before any test file
# imports Ryu: eventlet's green modules (eventlet.wsgi, which ryu.app.wsgi
# loads) import these while sys.modules holds green socket, select and
# threading, and a module loaded for the first time then keeps them.  A
# test's own server thread built on such a module waits in eventlet's hub
# forever (a shutdown that never returns, a run that never exits).
import http.client  # noqa: F401,E402
import http.server  # noqa: F401,E402
import socketserver  # noqa: F401,E402
import ssl  # noqa: F401,E402
import urllib.request  # noqa: F401,E402

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from onvm import services  # noqa: E402  (needs the path above)

# Interface names are limited to 15 characters: keep the prefix short.
RUN_PREFIX = "t%03x" % (os.getpid() & 0xfff)
_NETNS_NOTE = "shared with the caller"
_WATCHDOG_OUT = []


def pytest_configure(config):
    global _NETNS_NOTE
    # The watchdog below writes to the terminal, not to fd 2, which pytest
    # captures during a test (it is not capturing now).
    _WATCHDOG_OUT.append(os.dup(2))
    if os.environ.get("ONVM_TEST_SHARED_NETNS") == "1":
        _NETNS_NOTE = "shared with the caller (ONVM_TEST_SHARED_NETNS=1)"
    elif os.geteuid() != 0:
        _NETNS_NOTE = "shared with the caller (not root)"
    else:
        services.enter_private_netns()
        _NETNS_NOTE = "private to this run"


def pytest_report_header(config):
    return [f"onvm: network namespace {_NETNS_NOTE}; run prefix {RUN_PREFIX}"]


def _need_binary(path, package):
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed (apt-get install {package})")


@pytest.fixture(scope="session")
def run_prefix():
    """Prefix for every bridge, namespace and process name of this run."""
    return RUN_PREFIX


def _etcd(tmp_path_factory):
    _need_binary(services.ETCD_BIN, "etcd-server")
    server = services.EtcdServer(workdir=str(tmp_path_factory.getbasetemp()))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    """A real etcd shared by the tests of one module."""
    yield from _etcd(tmp_path_factory)


@pytest.fixture
def etcd_per_test(tmp_path_factory):
    """A real etcd of this test alone (for tests that kill or fill it)."""
    yield from _etcd(tmp_path_factory)


@pytest.fixture
def etcd_cluster(tmp_path_factory):
    """A real 3-member etcd cluster of this test alone (tests kill, pause
    and resume its members); see onvm.services.EtcdCluster."""
    _need_binary(services.ETCD_BIN, "etcd-server")
    cluster = services.EtcdCluster(3, workdir=str(tmp_path_factory.getbasetemp()))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def ovs():
    """A private Open vSwitch shared by the tests of one module; bridges
    must be named with `ovs.prefix` (the run prefix)."""
    for binary in (services.OVSDB_SERVER_BIN, services.OVS_VSWITCHD_BIN,
                   services.OVSDB_TOOL_BIN):
        _need_binary(binary, "openvswitch-switch")
    server = services.OvsServer(RUN_PREFIX)
    try:
        yield server
    finally:
        server.stop()


def need_root_and_tools(*extra):
    """Skip, saying why, where the emulation cannot run (`extra`: more
    programs a test needs, e.g. /usr/sbin/ethtool)."""
    if os.geteuid() != 0:
        pytest.skip("the emulation needs root (namespaces, OVS, Mininet)")
    for tool in ("/usr/bin/etcd", "/usr/sbin/ovs-vswitchd", "/usr/bin/mnexec") + extra:
        if not os.path.exists(tool):
            pytest.skip(f"{tool} is not installed")


# The tests' emulations: agents put their stats in the store every second
# (users' default: contracts.statsum.PUBLISH_S, 5 s), so a test waiting for
# stats newer than some moment waits about a second, not five.
TEST_PUBLISH_S = 1.0


@contextlib.contextmanager
def started_emulation(topo_path, prefix, workdir=None, **kwargs):
    """A started onvm.emulate.Emulation of `topo_path` (its run directory
    under `workdir`, default the topology's; `kwargs` as Emulation takes
    them, publish_interval TEST_PUBLISH_S unless given); stopped, its files
    removed, and checked to leave nothing of `prefix` behind: no bridge, no
    interface, no agent runtime dir."""
    need_root_and_tools()
    from onvm.emulate import Emulation
    workdir = str(workdir or os.path.dirname(str(topo_path)))
    kwargs.setdefault("publish_interval", TEST_PUBLISH_S)
    emulation = Emulation(str(topo_path), prefix=prefix, workdir=workdir, **kwargs)
    try:
        emulation.start()
        yield emulation
    finally:
        emulation.stop()        # also the DPDK runtime dirs of hosts added (add_host)
        emulation.remove_files()
    leftovers = [n for n in os.listdir("/sys/class/net") if n.startswith(prefix)]
    assert not leftovers, f"interfaces left behind: {leftovers}"
    runtime = os.listdir("/var/run/dpdk") if os.path.isdir("/var/run/dpdk") else []
    assert not [d for d in runtime if d.startswith(prefix)], \
        f"DPDK runtime dirs left behind: {runtime}"


_EMULATE_DIRS = []


def emulate_env():
    """os.environ for an `onvm emulate` subprocess: its run directory
    (logs, credentials; the command keeps it for its user) made under a
    directory of its own (TMPDIR), removed when the session ends."""
    d = tempfile.mkdtemp(prefix="onvm-t-")
    _EMULATE_DIRS.append(d)
    return dict(os.environ, TMPDIR=d)


@pytest.fixture(scope="session", autouse=True)
def _remove_emulate_dirs():
    yield
    for d in _EMULATE_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def emulation_fixture(name, topology, **kwargs):
    """A module-scoped fixture: one emulation of the topology text
    `topology` (written to NAME.yaml in a fresh directory), shared by the
    module's tests, which run in file order."""
    @pytest.fixture(scope="module")
    def emu(tmp_path_factory, run_prefix):
        workdir = tmp_path_factory.mktemp(name)
        path = workdir / f"{name}.yaml"
        path.write_text(topology)
        with started_emulation(path, run_prefix, **kwargs) as emulation:
            yield emulation
    return emu


# A hard limit on each phase of a test (setup, call, teardown), above
# pytest-timeout's: pytest-timeout raises in the main thread, which a test
# blocked inside eventlet's hub (a green lock nobody will release) never
# sees, and its thread method needs a real thread that eventlet may have
# turned green.  faulthandler's timer is a C thread: it prints every
# thread's stack and ends the run, so a hang costs minutes, not CI's limit.
# pytest's faulthandler plugin cancels the timer when a test fails, so it
# is armed again at the start of every phase.
HARD_LIMIT_S = float(os.environ.get("ONVM_TEST_HARD_LIMIT_S", 900))


def _arm_watchdog():
    import faulthandler
    faulthandler.dump_traceback_later(HARD_LIMIT_S, exit=True, file=_WATCHDOG_OUT[0])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _arm_watchdog()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    _arm_watchdog()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    _arm_watchdog()


def pytest_unconfigure(config):
    """A thread a test left running (not a daemon) would keep the run from
    ever exiting: its stack is printed, and the run ends with pytest's own
    status anyway."""
    import faulthandler
    import threading
    import traceback
    faulthandler.cancel_dump_traceback_later()
    left = [t for t in threading.enumerate()
            if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if not left:
        return
    frames = sys._current_frames()
    out = os.fdopen(os.dup(_WATCHDOG_OUT[0]), "w") if _WATCHDOG_OUT else sys.__stderr__
    out.write(f"\nonvm tests: {len(left)} thread(s) left running by the tests; "
              "ending the run without waiting for them:\n")
    for t in left:
        out.write(f"--- {t!r}\n" + "".join(traceback.format_stack(frames.get(t.ident))))
    out.flush()
    status = getattr(config, "_onvm_exitstatus", 0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(status))


def pytest_sessionfinish(session, exitstatus):
    session.config._onvm_exitstatus = exitstatus
