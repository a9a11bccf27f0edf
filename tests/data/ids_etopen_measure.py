"""`onvm nf check ids` over a rule file: the loaded fraction of its tcp, udp,
ip and http rules and the keywords that skipped the others, for
BENCHMARKS.md: `PYTHONPATH=. python tests/data/ids_etopen_measure.py FILE`.

Not here: the check itself (nfs/check.py), the rules (kept out: licence)."""
import collections, json, subprocess, sys, re
path = sys.argv[1]
out = subprocess.run([sys.executable, "-m", "onvm.cli", "nf", "check", "ids", "--config", path, "--json"],
                     capture_output=True, text=True)
res = json.loads(out.stdout)
lines = open(path).read().splitlines()
proto = lambda ln: lines[ln - 1].split()[1]
skipped = {s["line"]: s for s in res["skipped"]}
inscope = [i for i, l in enumerate(lines, 1) if l.startswith(("alert", "drop")) and l.split()[1] in ("tcp", "udp", "ip", "http")]
sk_in = [skipped[i] for i in inscope if i in skipped]
print(f"{path}: all {len(lines)} rules: loaded {res['loaded']}; tcp/udp/ip/http: {len(inscope)}, loaded {len(inscope) - len(sk_in)} "
      f"({100 * (len(inscope) - len(sk_in)) / len(inscope):.0f} %)")
print("  skip keywords (tcp/udp/ip/http):", collections.Counter(s["keyword"] for s in sk_in).most_common())
print("  skip keywords (others):", collections.Counter(s["keyword"] for i, s in skipped.items() if i not in inscope).most_common())
