"""`onvm emulate --etcd-members 3`: the store as a real three-member etcd
cluster in the emulation, with real traffic (topologies/minimal.yaml).

One run, two faults of the store, one after the other:
  1. the member the controller talks to (the first of the store URL,
     m0: the client asks it first and leaves it only when it fails) is
     killed with SIGKILL and left down;
  2. the two members left are filled until etcd raises its NOSPACE alarm
     (a quota of 8 MiB), and stay full until the end of the run.
Through both, traffic must flow with zero loss, no host may be evicted,
plans keep their generation, and every agent and the controller log the
NOSPACE alarm once, by name, and keep running.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from onvm import procs
from onvm.services import wait_for
from conftest import emulate_env
from test_emulate import need_root_and_tools
from test_emulate_cli import MINIMAL, ONVM, REPO, _children

QUOTA = 8 * 1024 * 1024

FILL = """
import sys
import contracts.store as st
store = st.open_store(sys.argv[1])
for i in range(1000):
    try:
        store.put("/onvm/filler/%d" % (i % 4), {"pad": "x" * 100000})
    except st.StoreFull as err:
        print("FULL", i, err)
        break
else:
    print("NOT FULL")
"""


def _cmdline(pid):
    with open(f"/proc/{pid}/cmdline") as f:
        return f.read().split("\0")


def _option(argv, name):
    return argv[argv.index(name) + 1]


@pytest.mark.etcd
@pytest.mark.ovs
@pytest.mark.netns
@pytest.mark.timeout(300)
def test_three_members_one_killed_then_the_store_full_and_traffic_goes_on():
    need_root_and_tools()
    proc = subprocess.Popen(ONVM + ["emulate", MINIMAL, "--seconds", "28", "--json",
                                    "--etcd-members", "3", "--etcd-quota-bytes", str(QUOTA)],
                            cwd=REPO, env=emulate_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    view = []
    reader = threading.Thread(target=lambda: view.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("--- t=") for line in view), 150,
                 "the live view of onvm emulate")
        members = {_option(_cmdline(pid), "--name"): pid
                   for pid, name in _children(proc.pid).items() if name == "etcd"}
        assert sorted(members) == ["m0", "m1", "m2"], members
        argv = {name: _cmdline(pid) for name, pid in members.items()}
        # DIR/onvm-etcd-XXX/m0: DIR is the emulation's run directory.
        rundir = os.path.dirname(os.path.dirname(_option(argv["m0"], "--data-dir")))
        for name in members:
            assert _option(argv[name], "--auto-compaction-mode") == "periodic"
            assert _option(argv[name], "--quota-backend-bytes") == str(QUOTA)
        # The controller and the agents were given all three members.
        conf = open(os.path.join(rundir, "controller.conf")).read()
        urls = [_option(argv[n], "--listen-client-urls") for n in ("m0", "m1", "m2")]
        assert f"store = {','.join(urls)}" in conf
        os.kill(members["m0"], signal.SIGKILL)
        # The second fault once the first is over: everyone talks to another member.
        moved = re.compile(r"member http://127\.0\.0\.1:\d+ did not answer; talking to")

        def everyone_moved():
            return all(moved.search(open(os.path.join(rundir, name)).read())
                       for name in ("controller.log", "agent-h1.log", "agent-h2.log"))
        wait_for(everyone_moved, 30, "the controller and both agents off the killed m0")
        fill = subprocess.run(
            ["nsenter", f"--net=/proc/{members['m1']}/ns/net", sys.executable, "-c", FILL,
             ",".join(urls[1:])], cwd=REPO, env=procs.child_env(), capture_output=True,
            text=True, timeout=60)
        assert fill.stdout.startswith("FULL"), fill.stdout + fill.stderr
        assert "NOSPACE" in fill.stdout and "etcdctl alarm disarm" in fill.stdout
        stdout = proc.stdout.read()         # the reader has stderr
        proc.wait(180)
        logs = {name: open(os.path.join(rundir, name)).read()
                for name in ("controller.log", "agent-h1.log", "agent-h2.log")}
    finally:
        procs.stop(proc, "onvm emulate", grace=30.0)   # it tears down on SIGTERM
    reader.join(10)
    text = "".join(view)
    assert proc.returncode == 0, text[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    web = summary["chains"]["web"]
    assert web["sent"] > 0 and web["lost"] == 0, (web, text[-3000:])
    assert {h: v["state"] for h, v in summary["hosts"].items()} == {"h1": "up", "h2": "up"}
    assert {v["generation"] for v in summary["hosts"].values()} == {1}, summary["hosts"]
    # Everyone moved off the dead member, and said so.
    for name, log in logs.items():
        assert re.search(r"member http://127\.0\.0\.1:\d+ did not answer; talking to", log), \
            f"{name}:\n{log[-2000:]}"
    # The agents hit the alarm (their stats puts), each logs it once.
    for name in ("agent-h1.log", "agent-h2.log"):
        assert logs[name].count("NOSPACE") == 1, f"{name}:\n{logs[name][-3000:]}"
    # The controller wrote nothing meanwhile (nothing changed); if it tried,
    # its store client logged the alarm once.
    assert logs["controller.log"].count("NOSPACE") <= 1, logs["controller.log"][-3000:]
    assert "Traceback" not in logs["controller.log"], logs["controller.log"][-3000:]
    print(f"\nweb: sent {web['sent']} received {web['received']} lost {web['lost']}; "
          f"filled after {fill.stdout.split()[1]} puts of 100 KB; controller NOSPACE lines "
          f"{logs['controller.log'].count('NOSPACE')}, 'store unreachable' lines "
          f"{logs['controller.log'].count('store unreachable')}")
