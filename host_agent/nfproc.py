"""`onvm nf run`: one NF instance as its own DPDK secondary process, attached
to its host agent's shared memory (packet pool and rings), as OpenNetVM NFs
run.  The agent starts these for plan instances in "process" mode; they can
also be started by hand.

`--lcore L` runs it on core L (DPDK's `-l L`: the EAL pins the process's
thread there); the agent gives each process its own core
(host_agent.lcores).  By hand without it: core 1 where there is one."""
import json
import logging
import os
import signal
import sys

from host_agent import fastpath as fp
from host_agent.lcores import CoresError, check_cores, machine_cores
from nflib.api import NFConfigError, make_nf

log = logging.getLogger("onvm.nf")


def cli_nf_run(args):
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = json.loads(args.config) if args.config else {}
    except ValueError as err:
        print(f"onvm nf run: --config is not JSON: {err}", file=sys.stderr)
        return 1
    prefix = args.file_prefix or "onvm_" + args.host
    eal = ["onvm-nf-%s-%d" % (args.host, args.instance), "--proc-type=secondary",
           "--file-prefix", prefix, "--no-pci", "--no-telemetry",
           "--log-level", "lib.eal:error"] + list(args.eal or [])
    try:
        lcore = nf_lcore(args.lcore, eal)
    except CoresError as err:
        print(f"onvm nf run: {err}", file=sys.stderr)
        return 1
    if lcore is not None:
        eal += ["-l", str(lcore)]
    try:
        fp.eal_init(eal)
    except fp.FastPathError as err:
        print(f"onvm nf run: {err} (is the agent of {args.host} running with "
              f"huge pages and --file-prefix {prefix}?)", file=sys.stderr)
        return 1
    try:
        # After the EAL: NFs may allocate DPDK objects (ACL contexts, hashes).
        nf = make_nf({"nf": args.type, "config": config})
    except (ValueError, NFConfigError) as err:
        print(f"onvm nf run: {err}", file=sys.stderr)
        fp.eal_cleanup()
        return 1
    signal.signal(signal.SIGTERM, lambda *_: fp.stop_serving())
    signal.signal(signal.SIGINT, lambda *_: fp.stop_serving())
    log.info("%s instance %d (%s) serving on cores %s", args.host, args.instance,
             args.type, ",".join(map(str, sorted(os.sched_getaffinity(0)))))
    try:
        n = fp.serve_nf(nf, args.host, args.instance)
    except fp.FastPathError as err:
        print(f"onvm nf run: {err}", file=sys.stderr)
        return 1
    fp.eal_cleanup()
    log.info("%s instance %d handled %d packets; counters %s", args.host,
             args.instance, n, json.dumps(getattr(nf, "counters", dict)()))
    return 0


def nf_lcore(lcore, eal):
    """The core to give the EAL's -l: `lcore` (checked: CoresError names
    the cores that exist), else core 1 where there is one, else 0; None
    when the EAL arguments choose their own."""
    if lcore is not None:
        check_cores([lcore], f"--lcore {lcore}")
        if any(a in ("-l", "-c", "--lcores") for a in eal):
            raise CoresError(f"--lcore {lcore}: the EAL arguments choose cores too")
        return lcore
    if any(a in ("-l", "-c", "--lcores") for a in eal):
        return None
    cores = machine_cores()
    return cores[1] if len(cores) > 1 else cores[0]
