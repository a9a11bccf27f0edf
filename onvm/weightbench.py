"""`onvm bench weights`: the remote-node choice under skewed traffic, with
the plan's shares alone and with weights recomputed from measured load.

One host's real fast path (host_agent.harness: DPDK EAL, ring ports, the
Manager and its pin table) runs a chain whose first NF is local and whose
next hop is remote, on PEERS hosts of equal share.  Traffic comes in
epochs (the controller re-weighs once a stats period, a second): a few
elephant flows that last the whole run and carry most packets, and mice
that come and go (each lives a few epochs).  After each epoch the bench
does what the controller does with the hosts' stats: a peer's utilisation
is the packets it was sent over its capacity (controller.plans.host_load:
reported Mpps over catalog Mpps), and with `measured` the next plan's
weights are controller.plans.remote_weights of the shares and those
loads, applied as a new plan generation.  Pins keep every flow on the host
it was first sent to, so weights steer new flows only.

Reported per mode: the busiest peer's utilisation over the mean, averaged
over the epochs after the first few, and flows that changed host (must be
0: affinity).  Not here: the controller's own stats path (an emulation
measures that end to end), queue occupancy (not used for weights).
"""
from __future__ import annotations

import json
import random
import statistics
import struct

from contracts.plan import check_plan

PEERS = [{"host": f"p{i}", "label": 20 + i, "mac": f"02:00:00:00:01:{i:02x}"}
         for i in range(3)]
SPI = 100
WARMUP = 3


def _frame(src, sport, dport=80):
    """A 64-byte Ethernet/IPv4/UDP frame (no scapy: thousands an epoch)."""
    from host_agent.harness import HOST_MAC
    mac = bytes.fromhex(HOST_MAC.replace(":", ""))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 0, 0, 64, 17, 0,
                     bytes(src), bytes((10, 0, 1, 7)))
    udp = struct.pack("!HHHH", sport, dport, 26, 0)
    return mac + bytes(6) + b"\x08\x00" + ip + udp + bytes(18)


def _plan(h, weights, generation):
    return check_plan({
        "host": "a", "generation": generation, "node_label": 16,
        "mac": "02:00:00:00:00:01", "uplink": h.out_port,
        "instances": [{"id": 1, "nf": "forward"}],
        "classifiers": [{"spi": SPI, "match": {"ipv4_dst": "10.0.1.0/24"}}],
        "hops": [{"spi": SPI, "si": 255, "local": 1},
                 {"spi": SPI, "si": 254,
                  "remote": [dict(p, weight=weights[p["host"]]) for p in PEERS]}],
    })


def _traffic(rng, epochs, elephants, elephant_pkts, mice, mouse_pkts, mouse_life):
    """Per epoch: [(flow, packets)]; a flow is (src bytes, sport)."""
    big = [((192, 0, 2, 1 + i), rng.randrange(1024, 65536)) for i in range(elephants)]
    out, alive, n = [], [], 0
    for e in range(epochs):
        alive = [(f, born) for f, born in alive if e - born < mouse_life]
        for _ in range(mice):
            n += 1
            alive.append((((198, 18, n >> 8 & 0xff, n & 0xff), rng.randrange(1024, 65536)), e))
        epoch = [(f, elephant_pkts) for f in big] + [(f, mouse_pkts) for f, _ in alive]
        rng.shuffle(epoch)
        out.append(epoch)
    return out


def run_mode(mode, traffic, capacity):
    """One run over `traffic`; `mode` "shares" or "measured"."""
    from controller.plans import remote_weights
    from host_agent.harness import Harness
    h = Harness(nfs=[("forward", None)])
    try:
        shares = {p["host"]: 1.0 / len(PEERS) for p in PEERS}
        weights, generation = dict(shares), 1
        by_label = {p["label"]: p["host"] for p in PEERS}
        h.manager.apply_plan(_plan(h, weights, generation), _factory())
        host_of, moved, ratios, timeline = {}, set(), [], []
        for e, epoch in enumerate(traffic):
            sent = {p["host"]: 0 for p in PEERS}
            frames = []
            for (src, sport), pkts in epoch:
                frames += [_frame(src, sport)] * pkts
            for at in range(0, len(frames), 2048):
                for out in h.send(frames[at:at + 2048], idle_seconds=0.01):
                    label = int.from_bytes(out[14:17], "big") >> 4
                    host = by_label[label]
                    sent[host] += 1
                    flow = (out[14 + 12 + 12:14 + 12 + 16], out[14 + 12 + 20:14 + 12 + 22])
                    if host_of.setdefault(flow, host) != host:
                        moved.add(flow)
            load = {host: n / capacity for host, n in sent.items()}
            mean = statistics.fmean(load.values())
            timeline.append({"epoch": e, "load": {k: round(v, 3) for k, v in load.items()},
                             "weights": dict(weights)})
            if e >= WARMUP and mean > 0:
                ratios.append(max(load.values()) / mean)
            if mode == "measured":
                weights = remote_weights(shares, 1.0, load)
                generation += 1
                h.manager.apply_plan(_plan(h, weights, generation), _factory())
        return {"busiest_over_mean": round(statistics.fmean(ratios), 3),
                "busiest_over_mean_max": round(max(ratios), 3),
                "flows_moved": len(moved), "flows": len(host_of),
                "timeline": timeline}
    finally:
        h.close()


def _factory():
    from nflib.api import make_nf
    return make_nf


def bench(epochs=20, elephants=4, elephant_pkts=900, mice=300, mouse_pkts=4,
          mouse_life=3, seeds=(1, 2, 3, 4)):
    """Both modes on the same traffic, once per seed (the seed places the
    elephants: how many share a peer is luck)."""
    out = {"epochs": epochs, "peers": len(PEERS), "elephants": elephants,
           "mice_per_epoch": mice, "mouse_life_epochs": mouse_life, "runs": []}
    for seed in seeds:
        traffic = _traffic(random.Random(seed), epochs, elephants, elephant_pkts, mice,
                           mouse_pkts, mouse_life)
        per_epoch = statistics.fmean(sum(p for _, p in ep) for ep in traffic[WARMUP:])
        capacity = per_epoch / len(PEERS) / 0.8          # 80 % busy on average
        run = {"seed": seed, "packets_per_epoch": round(per_epoch),
               "elephant_share": round(elephants * elephant_pkts / per_epoch, 3)}
        for mode in ("shares", "measured"):
            r = run_mode(mode, traffic, capacity)
            last = r.pop("timeline")[-1]
            r["last_epoch"] = last
            run[mode] = r
        out["runs"].append(run)
    for mode in ("shares", "measured"):
        out[mode + "_busiest_over_mean"] = round(statistics.fmean(
            r[mode]["busiest_over_mean"] for r in out["runs"]), 3)
    return out


def cli_bench_weights(args):
    out = bench(epochs=args.epochs, elephants=args.elephants,
                seeds=range(args.seed, args.seed + args.runs))
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{out['peers']} peers; {out['elephants']} elephants for the whole run, "
          f"{out['mice_per_epoch']} new mice an epoch, each for {out['mouse_life_epochs']} "
          f"epochs; capacity: 80 % busy on average")
    for r in out["runs"]:
        print(f"  seed {r['seed']}: elephants carry {r['elephant_share']:.0%} of "
              f"{r['packets_per_epoch']} packets an epoch")
        for mode in ("shares", "measured"):
            m = r[mode]
            print(f"    weights from {mode:8s}: busiest peer / mean = "
                  f"{m['busiest_over_mean']:.2f} (worst epoch {m['busiest_over_mean_max']:.2f}); "
                  f"flows that changed host: {m['flows_moved']} of {m['flows']}")
    print(f"  mean over seeds: {out['shares_busiest_over_mean']:.2f} with shares, "
          f"{out['measured_busiest_over_mean']:.2f} with measured load")
    return 0
