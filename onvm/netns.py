"""Network namespaces: a private one for a whole run, and the store
reachable from inside the emulated hosts' ones.

`enter_private_netns()` moves this process into a namespace of its own
(tests and `onvm emulate` do it first: OVS's userspace datapath allows one
per namespace).  `StoreForwarder` makes 127.0.0.1:PORT inside each
emulated host's namespace reach our local etcd, so agents there use the
same store URL: a real data center has a management network, this is ours.

Not here: what runs in the namespaces (emulate.py), the store itself
(services.EtcdServer).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import socket
import subprocess
import threading

LOG = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC, MS_PRIVATE, MNT_DETACH = 0x4000, 0x40000, 2


class NamespaceError(OSError):
    """Entering or using a namespace failed; the message says which and why."""


def libc_call(libc, name, *args):
    """Call a libc function that returns 0 on success; OSError otherwise."""
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


def enter_private_netns():
    """Move this process (and all it starts later) into a fresh network
    namespace with its own mount namespace, loopback up and /sys remounted.

    Why: the userspace datapath makes one kernel tap named `ovs-netdev` per
    network namespace, so two private OVS instances (two test runs, a test
    and `onvm emulate`) cannot share one.  In a private namespace each run
    also gets its own 127.0.0.1 ports and interface names, and every
    interface it made disappears when the process ends.  Call it before
    starting threads; it needs root (CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        raise NamespaceError("needs root (network namespaces, OVS, Mininet)")
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc_call(libc, "unshare", CLONE_NEWNET | CLONE_NEWNS)
    # Private mounts: the /sys remount below must not leak to the host.
    libc_call(libc, "mount", b"none", b"/", None, MS_REC | MS_PRIVATE, None)
    # /sys shows the namespace of whoever mounted it; tools (Mininet,
    # OVS) read /sys/class/net, so remount it for our namespace.
    if libc.umount2(b"/sys", MNT_DETACH) == 0:
        libc_call(libc, "mount", b"sysfs", b"/sys", b"sysfs", 0, None)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    LOG.info("this process now runs in a private network namespace")


def listen_in_netns(pid, port):
    """A listening TCP socket on 127.0.0.1:`port` inside the network namespace
    of process `pid`.  setns changes only the calling thread's namespace, so
    a short-lived thread enters, binds and leaves; the socket stays there."""
    result = {}

    def enter_and_bind():
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            libc_call(libc, "setns", target, CLONE_NEWNET)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(64)
            result["sock"] = sock
        except OSError as err:
            result["error"] = err
        finally:
            libc.setns(own, CLONE_NEWNET)
            os.close(own)
            os.close(target)
    t = threading.Thread(target=enter_and_bind)
    t.start()
    t.join()
    if "error" in result:
        raise NamespaceError(f"no store forwarder in the namespace of pid {pid}: "
                             f"{result['error']}")
    return result["sock"]


class StoreForwarder:
    """Makes 127.0.0.1:`port` inside each added namespace reach 127.0.0.1:`port`
    of ours: one thread a direction a connection copies the bytes."""

    def __init__(self, port):
        self.port = port
        self.listeners = []
        self.conns = []

    def add(self, pid):
        """Listen in the network namespace of process `pid`."""
        sock = listen_in_netns(pid, self.port)
        self.listeners.append(sock)
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return              # closed by stop()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        for s in self.listeners + self.conns:
            try:
                s.close()
            except OSError:
                pass
        self.listeners, self.conns = [], []
