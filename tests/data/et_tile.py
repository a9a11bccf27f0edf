"""Tile tests/data/et-style.rules into a ruleset of N rules for benchmarks:
`python tests/data/et_tile.py N OUT`.  Each copy after the first has its own
sids and contents (a 4-digit tag before each content, depths 4 longer), so
Hyperscan compiles N distinct rules of ET Open's shapes; the 3 in 33 that
the IDS skips (byte_test, xbits, http.stat_code) stay skipped.

Not here: the rules themselves (et-style.rules) or their tests
(tests/test_nf_ids_ruleset.py)."""
import os
import re
import sys

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "et-style.rules")


def tile(n, source=SOURCE):
    with open(source) as f:
        src = [line for line in f if line.startswith(("alert", "drop"))]
    rules = []
    for k in range(n // len(src) + 1):
        for line in src:
            if k:
                line = re.sub(r"sid:(\d+)", lambda m: f"sid:{int(m.group(1)) + 1000000 * k}", line)
                line = re.sub(r'content:"', f'content:"{k:04d}', line)
                line = re.sub(r"depth:(\d+)", lambda m: f"depth:{int(m.group(1)) + 4}", line)
            rules.append(line)
    return rules[:n]


if __name__ == "__main__":
    with open(sys.argv[2], "w") as out:
        out.writelines(tile(int(sys.argv[1])))
