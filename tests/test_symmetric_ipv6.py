"""Real TCP over IPv6 through a symmetric chain (issue 12, IPv6 end to
end): an emulation (etcd, Mininet with OVS, ryu-manager, agents) whose
chain web6 matches IPv6 to a server and runs firewall-stateful then
monitor, one NF a host, so the way back crosses hosts too.  The edge's
client opens HTTP connections over IPv6; the server's replies come back
by the IPv6 reply rules its switch learns, through the monitor and the
firewall (whose connection table lets them pass: its rules allow only
new connections to the server), to the client.  A server's packet that
answers nothing is dropped at its switch."""
import pytest

from onvm.emulate import Emulation
from onvm.services import wait_for
from test_emulate import need_root_and_tools
from test_symmetric import counter, instances

pytestmark = [pytest.mark.ovs, pytest.mark.etcd, pytest.mark.netns,
              pytest.mark.timeout(300)]

SERVER6 = "2001:db8:80::10"
TOPOLOGY = f"""\
name: symmetric-ipv6
switches:
  - {{name: s1, dpid: 0x1}}
hosts:
  - {{name: h1, switch: s1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.0.1/24, cores: 1}}
  - {{name: h2, switch: s1, port: 2, mac: "02:00:00:00:00:02", ip: 10.0.0.2/24, cores: 1}}
links: []
edges:
  - {{name: internet, switch: s1, port: 10}}
servers:
  - {{name: web1, switch: s1, port: 5, mac: "02:00:00:00:01:10", ip: 10.0.1.10/24}}
nfs:
  firewall-stateful: {{cores: 1, mpps: 1, config: web6.rules}}
  monitor: {{cores: 1, mpps: 1}}
chains:
  - name: web6
    ingress: internet
    egress: web1
    symmetric: true
    match: {{ipv6_dst: "{SERVER6}/128", ip_proto: 6, tcp_dst: 80}}
    nfs: [firewall-stateful, monitor]
    mpps: 0.5
"""
RULES = f"allow tcp any {SERVER6}/128 any 80\ndefault deny\n"


def test_http_over_ipv6_goes_through_the_chain_both_ways(tmp_path, run_prefix):
    need_root_and_tools()
    (tmp_path / "web6.rules").write_text(RULES)
    path = tmp_path / "web6.yaml"
    path.write_text(TOPOLOGY)
    emu = Emulation(str(path), prefix=run_prefix + "6", workdir=str(tmp_path))
    try:
        emu.start()
        wait_for(lambda: emu.tcp("web6")["ok"] >= 3, 120,
                 "the first HTTP connections over IPv6 through web6")
        status = emu.http("web6", 20, rate=10.0)
        assert status.get("ok") == 20 and not status.get("failed"), status
        assert set(status["servers"]) == {"web1"}, status
        # every connection opened at the firewall; its replies passed by
        # the connection table (the rules would deny them); agents publish
        # their stats every few seconds
        wanted = lambda: all(sum(counter(emu, "firewall-stateful", name).values()) >= 23
                             for name in ("opened", "replies"))
        try:
            wait_for(wanted, 30, "the firewall's counters of the connections")
        except TimeoutError:
            raise AssertionError(instances(emu, "firewall-stateful")) from None
        v6 = counter(emu, "firewall-stateful", "connections6")
        assert sum(v6.values()) >= 1, v6           # closed ones linger `closing` seconds
        placed = {nf: {h for h, _ in instances(emu, nf)} for nf in ("firewall-stateful",
                                                                    "monitor")}
        assert len(placed["firewall-stateful"] | placed["monitor"]) == 2, \
            f"one NF a host, so the way back crossed hosts: {placed}"
        assert emu.tcp("web6")["failed"] == 0, emu.tcp("web6")
    finally:
        emu.stop()
        emu.remove_files()
