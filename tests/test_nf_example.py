"""docs/nfs.md's "Writing an NF" example, built and run: the third-party
package docs/examples/acme_nfs (a Cython NF against nflib/nf.pxd and a
Python NF) is compiled by its own setup.py, as its author would, then runs
through the real fast path next to a built-in NF."""
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.all import IP, raw

from nflib.api import make_nf
from test_nf_helpers import eth, harness, tcp, udp

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
FILES = ("acme_nfs/port_block.pyx", "acme_nfs/dns_block.py", "setup.py")


@pytest.fixture(scope="module")
def acme(tmp_path_factory):
    """The example package, built in a copy of docs/examples."""
    work = tmp_path_factory.mktemp("acme") / "examples"
    shutil.copytree(EXAMPLES, work)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    built = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    sys.path.insert(0, str(work))
    try:
        yield {"port-block": importlib.import_module("acme_nfs.port_block").PortBlock,
               "dns-block": importlib.import_module("acme_nfs.dns_block").DnsBlock}
    finally:
        sys.path.remove(str(work))
        for name in [m for m in sys.modules if m.startswith("acme_nfs")]:
            del sys.modules[name]


def test_docs_show_the_example_files_as_they_are():
    doc = (ROOT / "docs" / "nfs.md").read_text()
    for name in FILES:
        assert (EXAMPLES / name).read_text() in doc, f"docs/nfs.md shows another {name}"


def test_the_example_nfs_run_in_the_fast_path(acme):
    def factory(inst):
        if inst["nf"] in acme:
            return acme[inst["nf"]](inst.get("config") or {})
        return make_nf(inst)

    later_fragment = raw(eth() / IP(src="10.0.0.5", dst="10.0.0.9", proto=17, frag=10)
                         / (b"\x00\x35" * 8))
    frames = [udp("10.0.0.5", "10.0.0.9", 1234, 53),          # dns-block drops
              udp("10.0.0.5", "10.0.0.53", 1234, 53),         # a resolver: passes
              tcp("10.0.0.5", "10.0.0.9", 4000, 23),          # port-block drops
              tcp("10.0.0.5", "10.0.0.9", 4000, 80),          # passes
              later_fragment]                                 # no L4 header: passes
    with harness([("dns-block", {"resolvers": ["10.0.0.53"]}),
                  ("port-block", {"port": 23}),
                  ("monitor", None)], nf_factory=factory) as h:
        out = h.send(frames)
        stats = h.stats()
    got = sorted((IP(f[14:]).dst, IP(f[14:]).frag) for f in out)
    assert got == [("10.0.0.53", 0), ("10.0.0.9", 0), ("10.0.0.9", 10)]
    assert stats["instances"][1]["counters"] == {"blocked": 1}
    assert stats["instances"][2]["counters"] == {"dropped": 1, "no_l4": 1}
    assert stats["instances"][3]["counters"]["packets"] == 3
    assert stats["drops"]["nf_drop"] == 2
