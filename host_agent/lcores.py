"""Which cores a host's fast path and its NF processes run on.

OpenNetVM gives the manager its cores and each NF process one core of its
own (`onvm nf run --lcore L`, DPDK's `-l L`): a polling NF that shares a
core with the manager or another NF halves both.  The agent's budget is
the cores its EAL core list (`-l` or `--lcores`, or `cores:` in its
config) names when that list has more than one core, else every core this
process may run on (its CPU affinity); the manager loop runs on the first
core of the list.  With `--workers N` the workers take the first N cores
of the budget (worker_cores); a worker whose core has an EAL worker lcore
of its own runs there, the others on threads registered as lcores
(host_agent.workers): `--lcores 0@0,1@0,2@1` (lcore_map) gives 2 workers
an EAL lcore each beside the main lcore, the agent's control thread.
`assign` gives each process-mode instance a core of the budget nobody else
has, and says which share when there are too few.

Not here: the EAL itself (nflib.eal), starting processes (host_agent.agent).
"""
import os
import re


class CoresError(ValueError):
    """A core list asks for cores this machine does not have; the message
    names what was asked and the cores that exist."""


_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_core_list(text):
    """An EAL core list ("0", "2-3", "0,2-4") -> sorted list of ints."""
    cores = set()
    for item in str(text).split(","):
        m = _ITEM.match(item)
        if not m:
            raise CoresError(f"{text!r} is not a core list like \"2-3\" or \"0,2\"")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise CoresError(f"{text!r}: range {lo}-{hi} runs backwards")
        cores.update(range(lo, hi + 1))
    return sorted(cores)


def format_cores(cores):
    """[0, 1, 2, 5] -> "0-2,5"."""
    out, cores = [], sorted(cores)
    i = 0
    while i < len(cores):
        j = i
        while j + 1 < len(cores) and cores[j + 1] == cores[j] + 1:
            j += 1
        out.append(str(cores[i]) if i == j else f"{cores[i]}-{cores[j]}")
        i = j + 1
    return ",".join(out)


CPU_ONLINE = "/sys/devices/system/cpu/online"
CPUSETS = ("/sys/fs/cgroup/cpuset.cpus.effective",           # cgroup v2
           "/sys/fs/cgroup/cpuset/cpuset.effective_cpus")      # cgroup v1


def machine_cores():
    """The cores this machine lets its processes run on: the online ones,
    within the cgroup's cpuset where there is one.  Not the process's CPU
    affinity: the EAL pins the thread that starts it to one core, and the
    processes it starts inherit that."""
    cores = set(_read_cores(CPU_ONLINE) or range(os.cpu_count() or 1))
    for path in CPUSETS:
        allowed = _read_cores(path)
        if allowed:
            cores &= set(allowed)
            break
    return sorted(cores)


def _read_cores(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return parse_core_list(text) if text else None


def _have(cores):
    return f"{len(cores)} core{'s' if len(cores) != 1 else ''} ({format_cores(cores)})"


def check_cores(asked, what, cores=None):
    """CoresError unless every core of `asked` (ints) is among `cores`
    (default: machine_cores()); `what` names the option in the message."""
    cores = machine_cores() if cores is None else sorted(cores)
    missing = sorted(set(asked) - set(cores))
    if missing:
        raise CoresError(f"{what}: no core {format_cores(missing)} here: this machine "
                         f"has {_have(cores)}")


def check_core_count(n, what, cores=None):
    """CoresError unless 1 <= n <= the number of `cores`."""
    cores = machine_cores() if cores is None else sorted(cores)
    if n < 1:
        raise CoresError(f"{what}: needs at least 1 core, not {n}")
    if n > len(cores):
        raise CoresError(f"{what}: asks for {n} cores, but this machine has {_have(cores)}")


def eal_core_list(eal_args):
    """The cores an EAL argument list names: with -l, or the cores its
    --lcores map puts lcores on ("0@0,1@0,2@1", "(0-1)@0,2"; see
    lcore_map); None with neither (or -c, whose form this does not read)."""
    if "-l" in eal_args[:-1]:
        return parse_core_list(eal_args[eal_args.index("-l") + 1])
    if "--lcores" in eal_args[:-1]:
        mapped = lcore_map(eal_args[eal_args.index("--lcores") + 1])
        return sorted({c for cores in mapped.values() for c in cores})
    return None


def _groups(text):
    """"0@0,(1-2)@(0,1)" -> ["0@0", "(1-2)@(0,1)"]: commas outside brackets."""
    out, depth, item = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(item)
            item = ""
        else:
            item += ch
    return out + [item]


def lcore_map(text):
    """DPDK's --lcores map -> {lcore: [cores]}: "0@0,1@0,2@1" runs lcores 0
    and 1 on core 0 and lcore 2 on core 1 (the lcores beside the main one,
    the lowest, are the EAL's worker lcores: host_agent.workers launches
    its workers there); an item without @ runs each lcore on the core of
    its number."""
    out = {}
    for item in _groups(str(text)):
        ids, _, cpus = item.partition("@")
        try:
            lcores = parse_core_list(ids.strip("()"))
            cores = parse_core_list(cpus.strip("()")) if cpus else None
        except CoresError:
            raise CoresError(f"--lcores {text}: {item!r} is not an lcore map item like "
                             f"\"1@0\" or \"(1-2)@(0,1)\"") from None
        for lcore in lcores:
            out[lcore] = cores or [lcore]
    return out


def check_eal_cores(eal_args):
    """CoresError if the EAL's -l (or --lcores) names a core this machine
    lacks (DPDK's own error does not say which)."""
    listed = eal_core_list(eal_args)
    if listed:
        opt = "-l" if "-l" in eal_args[:-1] else "--lcores"
        check_cores(listed, f"{opt} {eal_args[eal_args.index(opt) + 1]}")


def budget(eal_args, cores=None):
    """(manager core, cores for NF processes) of an agent started with
    `eal_args`: see the module's docstring."""
    cores = machine_cores() if cores is None else sorted(cores)
    listed = eal_core_list(eal_args) or [cores[0]]
    manager = listed[0]
    pool = listed if len(listed) > 1 else cores
    return manager, [c for c in pool if c != manager]


def assign(instance_ids, manager, free, kept=None):
    """{instance id: core} for NF processes, and the cores that are
    shared.  Each instance keeps the core it had (`kept`) while that core
    is still free and its own; the others take free cores in order; when
    there are none left they share, round-robin over the NF cores (over
    the manager's core if there are no others)."""
    kept = kept or {}
    out, taken = {}, set()
    for iid in sorted(instance_ids):
        core = kept.get(iid)
        if core in free and core not in taken:
            out[iid] = core
            taken.add(core)
    spare = [c for c in free if c not in taken]
    waiting = [iid for iid in sorted(instance_ids) if iid not in out]
    for iid in waiting[:len(spare)]:
        out[iid] = spare.pop(0)
    overflow = [iid for iid in waiting if iid not in out]
    ring = list(free) or [manager]
    for k, iid in enumerate(overflow):
        out[iid] = ring[k % len(ring)]
    users = {}
    for core in out.values():
        users[core] = users.get(core, 0) + 1
    users[manager] = users.get(manager, 0) + 1
    shared = sorted(c for c, n in users.items() if n > 1)
    return out, shared


def worker_cores(eal_args, n, cores=None):
    """The cores of `n` worker loops: the manager's core, then the NF
    budget's (see budget); CoresError if there are fewer than `n`."""
    manager, free = budget(eal_args, cores)
    have = [manager] + free
    if n > len(have):
        raise CoresError(f"--workers {n}: asks for {n} cores, but the agent's budget has "
                         f"{_have(sorted(have))}")
    return have[:n]


def plan_cores(plan):
    """(cores the plan gives out on its host, [(instance id, nf, cores)]):
    each instance's catalog `cores` (1 where the plan says none), NF
    processes' included.  With worker cores every inline instance runs on
    every worker, so a host that runs this many workers gives each
    instance at least the cores placement counted for it."""
    each = [(i["id"], i["nf"], int(i.get("cores", 1))) for i in plan.get("instances", ())]
    return sum(c for _, _, c in each), each


def check_plan_cores(plan, cores, what="plan"):
    """CoresError if `plan` gives out more cores than `cores` (the agent's
    budget) holds; the message names the instances and both numbers.  A
    plan none of whose instances says `cores` (hand-written; the
    controller writes it where the catalog's is above 1) claims none and
    passes: its instances share what there is."""
    total, each = plan_cores(plan)
    if total > len(cores) and any("cores" in i for i in plan.get("instances", ())):
        named = ", ".join(f"{iid} ({nf}) {c}" for iid, nf, c in each)
        raise CoresError(f"{what} generation {plan.get('generation')} gives out {total} "
                         f"cores (instance (nf) cores: {named}), but this host's budget has "
                         f"{_have(sorted(cores))}")


def auto_workers(eal_args, plan=None, cores=None):
    """`--workers auto`: the cores `plan` gives out (plan_cores; CoresError
    if over the budget, see check_plan_cores; a plan that claims none
    gets one per instance, at most the budget), else, with no plan, the
    whole budget (the manager's core and the others: budget)."""
    manager, free = budget(eal_args, cores)
    have = [manager] + free
    if plan is None:
        return len(have)
    check_plan_cores(plan, have, "--workers auto: plan")
    return max(1, min(plan_cores(plan)[0], len(have)))
