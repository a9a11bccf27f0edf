"""Reload time of an ids rule file in a running instance, for
BENCHMARKS.md: `PYTHONPATH=. python tests/data/ids_reload_bench.py FILE [N]`
starts one ids on FILE in a fast-path harness, reloads FILE N times (5)
with `IDS.reload` (what the agent calls when the file changes) and prints
the wall time of each call, the build part of it and the process's RSS.

Not here: the reload itself (nfs/ids.pyx), tiling rulesets (et_tile.py)."""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_nf_helpers import harness  # noqa: E402


def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))


def main(path, reps):
    with harness([("ids", {"rules": path})]) as h:
        nf = h.nf(1)
        before = rss_mb()
        walls, builds = [], []
        for _ in range(reps):
            start = time.perf_counter()
            got = nf.reload({"rules": path})
            walls.append((time.perf_counter() - start) * 1000)
            builds.append(got["ms"])
        print(f"{path}: {got['loaded']} loaded, {got['skipped']} skipped; {reps} reloads: "
              f"wall median {statistics.median(walls):.0f} ms ({min(walls):.0f}-{max(walls):.0f}), "
              f"build median {statistics.median(builds):.0f} ms; RSS {before} MB running, "
              f"{rss_mb()} MB after")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5)
