"""nfs.configs: every built-in NF type's config checked in plain Python by
the very parser its constructor calls, so `onvm topo validate` refuses
what an agent would refuse; third-party types check themselves or are
named as not checkable."""
import glob
import os
import subprocess
import sys

import pytest

from nfs import configs
from nflib.api import NFConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(REPO, "topologies", "rules")


def test_checking_needs_no_dpdk():
    code = ("import sys, nfs.configs, controller.topology\n"
            "print(sorted(m for m in sys.modules if m.startswith(('host_agent', 'nfs.', 'nflib.', 'dpdk')) "
            "and m not in ('nflib.api', 'nfs.api', 'nfs.configs', 'nfs.nfconfig', 'nfs.fwrules', "
            "'nfs.idsrules')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert (run.returncode, run.stdout) == (0, "[]\n"), run.stderr


def test_the_nfs_parse_their_config_with_these_parsers():
    from nfs import ddos, firewall, idsset, lb, nat, ratelimit, stateful  # noqa: F401
    assert lb.parse_config is configs.parse_lb
    assert nat.parse_config is configs.parse_nat
    assert ratelimit.parse_config is configs.parse_ratelimit
    assert ddos.parse_config is configs.parse_ddos
    assert stateful.parse_config is configs.parse_stateful
    assert firewall.parse_firewall_rules is configs.parse_firewall_rules
    assert idsset.parse_ids is configs.parse_ids       # the ids builds its rule set there


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(RULES, "*"))),
                         ids=os.path.basename)
def test_every_shipped_config_passes_for_its_nf_type(path):
    name = os.path.basename(path)
    nf = ("firewall" if "-fw." in name else "ids" if "-ids." in name
          else "lb" if "-lb." in name else "nat" if "-nat." in name else name.split(".")[0])
    assert configs.check_config(nf, configs.instance_config(path))


def test_instance_config_is_what_a_plan_carries():
    assert configs.instance_config(None) == {}
    assert configs.instance_config("/r/web.rules") == {"rules": "/r/web.rules"}
    assert configs.instance_config("/r/LB.YAML") == {"file": "/r/LB.YAML"}


def test_every_error_with_its_place(tmp_path):
    (tmp_path / "nat.yaml").write_text("external_ip: 10.0.0.1\ninternal: 10.0.0.0/8\n"
                                       "max_mappings: 0\n")
    with pytest.raises(NFConfigError) as err:
        configs.check_config("nat", {"file": "nat.yaml"}, base_dir=str(tmp_path))
    nat = tmp_path / "nat.yaml"
    assert str(err.value).splitlines() == [
        f"{nat}:3: max_mappings: must be a positive integer, got 0",
        f"{nat}:1: external_ip: 10.0.0.1 is inside the internal network 10.0.0.0/8"]
    with pytest.raises(NFConfigError) as err:
        configs.check_config("firewall", {})
    assert str(err.value) == "firewall config needs 'rules' (a rule file) or 'rules_text'"
    with pytest.raises(NFConfigError) as err:
        configs.check_config("forward", {"rules": "x"})
    assert str(err.value) == "<forward config>: rules: unknown key; known: none"
    assert configs.check_config("firewall", {"stateful": True, "rules_text": "default allow\n"}) \
        == ([], True, {"timeouts": {"tcp": 300, "udp": 60, "icmp": 30, "other": 60,
                                    "closing": 10},
                       "max_connections": 65536, "stateful": True})


class _EntryPoint:
    def __init__(self, target, value):
        self.target, self.value = target, value

    def load(self):
        return self.target


class _Checked:
    @classmethod
    def check_config(cls, config):
        if "depth" not in config:
            raise NFConfigError("<acme config>: missing key 'depth'")
        return config


def test_third_party_types_check_themselves_or_say_they_cannot(monkeypatch):
    monkeypatch.setattr(configs, "nf_types", lambda: {
        "acme": _EntryPoint(_Checked, "acme.nf:Acme"),
        "plain": _EntryPoint(object, "plain.nf:Plain")})
    assert configs.check_config("acme", {"depth": 3}) == {"depth": 3}
    with pytest.raises(NFConfigError, match="missing key 'depth'"):
        configs.check_config("acme", {})
    with pytest.raises(configs.NotCheckable) as why:
        configs.check_config("plain", {})
    assert str(why.value) == "NF type 'plain' (plain.nf:Plain) offers no check_config"
    with pytest.raises(configs.NotCheckable) as why:
        configs.check_config("gone", {})
    assert str(why.value) == "NF type 'gone' is not installed here (installed: acme, plain)"
