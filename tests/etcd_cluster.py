"""A real etcd cluster of several members on loopback ports, for tests of
the store client's failover: each member its own data dir and ports, one
`--initial-cluster`, the same short timings as `onvm.services.EtcdServer`
(1 s leases hold).  Members can be killed, paused (SIGSTOP) and resumed.

Not here: the single etcd every other test uses (`onvm.services`).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request

from onvm.services import ETCD_BIN, GaveUp, free_port, wait_for


class EtcdCluster:
    """`size` etcd members; `url` lists every client URL, comma-separated,
    in member order (the store client talks to the first one first)."""

    def __init__(self, size=3, workdir=None, timeout=20.0):
        self.dir = tempfile.mkdtemp(prefix="onvm-etcd-cluster-", dir=workdir)
        self.clients = [free_port() for _ in range(size)]
        self.peers = [free_port() for _ in range(size)]
        self.names = [f"m{i}" for i in range(size)]
        self.procs = [None] * size
        self.initial = ",".join(f"{n}=http://127.0.0.1:{p}"
                                for n, p in zip(self.names, self.peers))
        try:
            for i in range(size):
                self.start(i)
            for i in range(size):
                wait_for(lambda i=i: self.healthy(i), timeout, f"etcd member {self.names[i]}")
        except BaseException:
            self.stop()
            raise

    def member_url(self, i):
        return f"http://127.0.0.1:{self.clients[i]}"

    @property
    def url(self):
        return ",".join(self.member_url(i) for i in range(len(self.names)))

    def start(self, i):
        url, peer = self.member_url(i), f"http://127.0.0.1:{self.peers[i]}"
        cmd = [ETCD_BIN, "--name", self.names[i],
               "--data-dir", os.path.join(self.dir, self.names[i]),
               "--listen-client-urls", url, "--advertise-client-urls", url,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", self.initial, "--initial-cluster-state", "new",
               "--initial-cluster-token", os.path.basename(self.dir),
               "--heartbeat-interval", "50", "--election-timeout", "500",
               "--log-level", "warn", "--logger", "zap"]
        with open(os.path.join(self.dir, f"{self.names[i]}.log"), "ab") as log:
            self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)

    def healthy(self, i):
        if self.procs[i].poll() is not None:
            raise GaveUp(f"etcd member {self.names[i]} exited with "
                         f"{self.procs[i].returncode}")
        with urllib.request.urlopen(self.member_url(i) + "/health", timeout=1) as resp:
            return json.load(resp).get("health") == "true"

    def kill(self, i):
        """The member dies at once (SIGKILL); the others keep a quorum."""
        self.procs[i].kill()
        self.procs[i].wait(5)

    def pause(self, i):
        self.procs[i].send_signal(signal.SIGSTOP)

    def resume(self, i):
        self.procs[i].send_signal(signal.SIGCONT)

    def stop(self):
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)    # a paused member must die too
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
