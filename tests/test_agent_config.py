"""`onvm agent --config FILE` (host_agent.agentconfig): a real server's
agent settings checked with FILE:LINE errors before anything starts, the
EAL arguments derived from them (`--no-pci` only for a vdev, `-a` for a NIC
bound to DPDK), and an agent started from a config file registering in a
real etcd."""
import os
import subprocess
import sys
import textwrap

import pytest

from contracts.store import open_store
from host_agent.agentconfig import ConfigError, load_config, parse_config
from onvm.services import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PCI = "0000:03:00.0"


@pytest.fixture
def sysfs(tmp_path):
    """A /sys with one NIC bound to vfio-pci and one to the kernel's ixgbe
    (this module's own input: the machine has no NIC to bind)."""
    root = tmp_path / "sys"
    for address, driver in ((PCI, "vfio-pci"), ("0000:03:00.1", "ixgbe")):
        (root / "bus" / "pci" / "drivers" / driver).mkdir(parents=True, exist_ok=True)
        device = root / "bus" / "pci" / "devices" / address
        device.mkdir(parents=True)
        (device / "driver").symlink_to(root / "bus" / "pci" / "drivers" / driver)
    return str(root)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A real CA, certificate and key (onvm.certs, with openssl)."""
    from onvm.certs import make_certs
    t = make_certs(str(tmp_path_factory.mktemp("tls")))
    password = os.path.join(os.path.dirname(t.ca), "etcd-password")
    with open(os.open(password, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write("s3cret pass\n")
    return {"ca.crt": t.ca, "h1.crt": t.client_cert, "h1.key": t.client_key,
            "other.key": t.server_key, "password": password}


def parse(text, sysfs="/nonexistent-sys", path="agent.yaml"):
    return parse_config(textwrap.dedent(text), path, sysfs)


def test_a_server_config_with_a_dpdk_nic_and_tls(sysfs, tls_files):
    config = parse(f"""\
        host: h1
        store:
          endpoints: [https://10.0.0.11:2379, https://10.0.0.12:2379/]
          ca: {tls_files['ca.crt']}
          cert: {tls_files['h1.crt']}
          key: {tls_files['h1.key']}
        nic: {{pci: "{PCI}"}}
        cores: "2-3"
        hugepages_mb: 1024
        metrics_port: 9200
        eal: [--log-level, "7"]
        """, sysfs)
    assert config.host == "h1"
    assert config.store == "https://10.0.0.11:2379,https://10.0.0.12:2379"
    assert config.tls_env == {"ONVM_STORE_CA": tls_files["ca.crt"],
                              "ONVM_STORE_CERT": tls_files["h1.crt"],
                              "ONVM_STORE_KEY": tls_files["h1.key"]}
    assert config.eal == ["-a", PCI, "-l", "2-3", "--socket-mem", "1024",
                          "--log-level", "7"]
    assert (config.metrics_port, config.idle_us, config.plan) == (9200, 0, None)


def test_a_vdev_gets_no_pci_and_a_list_of_cores():
    config = parse("""\
        host: h2
        store: {endpoints: http://127.0.0.1:2379}
        nic: {vdev: "net_af_packet0,iface=eth1"}
        cores: [0, 4]
        hugepages_mb: 0
        """)
    assert config.eal == ["--vdev", "net_af_packet0,iface=eth1", "--no-pci", "-l", "0,4",
                          "--no-huge", "-m", "256"]


def test_every_problem_at_once_with_its_line(sysfs, tls_files):
    with pytest.raises(ConfigError) as err:
        parse(f"""\
            host: h1
            store:
              endpoints: [http://10.0.0.11:2379, ftp://x]
              cert: {tls_files['h1.crt']}
              ca: /nonexistent/ca.crt
            nic: {{pci: "0000:03:00.1"}}
            cores: two
            metrics_port: 70000
            idle_us: -1
            colour: blue
            host: h2
            """, sysfs)
    assert err.value.errors == [
        "agent.yaml:11: host: duplicate key (first at line 1)",
        "agent.yaml:10: colour: unknown key; known: host, store, plan, nic, cores, "
        "hugepages_mb, metrics_port, idle_us, eal, metrics_addr, metrics_cert, "
        "metrics_key, metrics_token_file",
        "agent.yaml:3: store.endpoints: must list etcd URLs like https://10.0.0.11:2379, "
        "not ['http://10.0.0.11:2379', 'ftp://x']",
        "agent.yaml:5: store.ca: cannot read '/nonexistent/ca.crt'",
        "agent.yaml:2: store.key: a client certificate and its key go together",
        "agent.yaml:6: nic.pci: 0000:03:00.1 is bound to ixgbe, not to a DPDK driver "
        "(vfio-pci, uio_pci_generic, igb_uio); run: dpdk-devbind.py --bind=vfio-pci "
        "0000:03:00.1",
        "agent.yaml:7: cores: must be an EAL core list like \"2-3\" or [2, 3], not 'two'",
        "agent.yaml:8: metrics_port: must be a whole number from 0 to 65535, not 70000",
        "agent.yaml:9: idle_us: must be a whole number from 0 to 1000000, not -1"]


@pytest.mark.parametrize("text, message", [
    ("host: h1\nstore: {endpoints: 'http://a:1'}\nnic: {pci: '0000:09:00.0'}\n",
     "agent.yaml:3: nic.pci: no PCI device 0000:09:00.0 on this machine"),
    ("host: h1\nstore: {endpoints: 'http://a:1'}\nnic: {pci: 0000:03:00.0}\n",
     "agent.yaml:3: nic.pci: must be a PCI address like \"0000:03:00.0\" (quoted)"),
    ("host: h1\nnic: {vdev: x, pci: '0000:03:00.0'}\nplan: /nonexistent\n",
     "agent.yaml:3: plan: cannot read '/nonexistent'"),
    ("host: h1\n", "agent.yaml:1: store: give exactly one of store"),
    ("host: h1\n  store: [\n", "agent.yaml:2: not YAML"),
    ("- h1\n", "agent.yaml:1: must be a mapping of keys"),
    ("store: {endpoints: 'https://a:1'}\n", "agent.yaml:1: host: must be the topology's"),
])
def test_bad_files_name_file_line_and_key(sysfs, text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "agent.yaml", sysfs)
    assert str(err.value).startswith(message), str(err.value)


def test_an_unreadable_file():
    with pytest.raises(ConfigError, match="^/nonexistent.yaml: cannot read: No such file"):
        load_config("/nonexistent.yaml")


def onvm_agent(*args):
    return [sys.executable, "-m", "onvm.cli", "agent", *args]


def test_onvm_agent_refuses_a_bad_config_before_starting(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("host: h1\nstore: {endpoints: 'http://127.0.0.1:1'}\nmetrics_port: x\n")
    res = subprocess.run(onvm_agent("--config", str(path)), capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert res.returncode == 1
    assert res.stderr == (f"onvm agent: {path}:3: metrics_port: must be a whole number "
                          f"from 0 to 65535, not 'x'\n")
    res = subprocess.run(onvm_agent("--host", "h1"), capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert res.returncode == 2 and "give --config FILE, or --host NAME" in res.stderr


@pytest.mark.etcd
def test_an_agent_from_a_config_file_registers_in_the_store(etcd, tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(textwrap.dedent(f"""\
        host: cfg1
        store: {{endpoints: ["{etcd.url}"]}}
        nic: {{vdev: net_null0}}
        cores: "0"
        hugepages_mb: 0
        metrics_port: 0
        idle_us: 200
        eal: [--file-prefix, onvmcfg{os.getpid()}]
        """))
    store = open_store(etcd.url)
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen(onvm_agent("--config", str(path), "--seconds", "30"), cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def registered():
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()
            return "cfg1" in store.hosts()
        wait_for(registered, 30, "the agent of cfg1 in /onvm/hosts/")
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
        store.close()
    assert proc.returncode == 0, (tmp_path / "agent.log").read_text()


def test_the_example_config_is_valid(sysfs, tls_files):
    with open(os.path.join(ROOT, "deploy", "agent.yaml.example")) as f:
        text = f.read()
    for name, path in tls_files.items():
        text = text.replace(f"/etc/onvm/tls/{name}", path)
    text = text.replace("/etc/onvm/etcd-password", tls_files["password"])
    config = parse_config(text, "agent.yaml.example", sysfs)
    assert config.store.startswith("https://192.0.2.11:2379,")
    assert config.eal == ["-a", PCI, "-l", "2-3", "--socket-mem", "1024"]
    assert len(config.tls_env) == 5
    assert config.tls_env["ONVM_STORE_USER"] == "root"
    assert config.tls_env["ONVM_STORE_PASSWORD_FILE"] == tls_files["password"]


def test_etcd_user_and_password_file(tls_files, tmp_path):
    open_pw = tmp_path / "open-password"
    open_pw.write_text("s3cret\n")
    open_pw.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        parse(f"""\
            host: h1
            store:
              endpoints: http://10.0.0.11:2379
              user: root
              password_file: {open_pw}
            """)
    assert f"agent.yaml:5: store.password_file: {open_pw}: password_file: the " \
        "password file is readable by every user" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse("""\
            host: h1
            store:
              endpoints: http://10.0.0.11:2379
              user: root
            """)
    assert "agent.yaml:4: store.user: an etcd user and its password_file " \
        "go together: password_file is missing" in str(err.value)


def test_a_key_that_is_not_the_certificates_is_named(tls_files):
    with pytest.raises(ConfigError) as err:
        parse(f"""\
            host: h1
            store:
              endpoints: https://10.0.0.11:2379
              cert: {tls_files['h1.crt']}
              key: {tls_files['other.key']}
              ca: {tls_files['h1.key']}
            """)
    assert [e.split(": ")[:2] for e in err.value.errors] == [
        ["agent.yaml:5", "store.key"], ["agent.yaml:6", "store.ca"]], err.value.errors
    assert f"{tls_files['other.key']}: key: not the key of {tls_files['h1.crt']}" \
        in err.value.errors[0]


def test_metrics_tls_and_token_keys(tls_files, tmp_path):
    token = tmp_path / "metrics-token"
    token.write_text("prometheus-scrape-token-0123456789\n")
    token.chmod(0o600)
    config = parse(f"""\
        host: h1
        plan: {tls_files['ca.crt']}
        metrics_addr: 192.0.2.101
        metrics_cert: {tls_files['h1.crt']}
        metrics_key: {tls_files['h1.key']}
        metrics_token_file: {token}
        """)
    assert config.metrics == {"metrics_addr": "192.0.2.101",
                              "metrics_cert": tls_files["h1.crt"],
                              "metrics_key": tls_files["h1.key"],
                              "metrics_token_file": str(token)}
    token.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        parse(f"""\
            host: h1
            plan: {tls_files['ca.crt']}
            metrics_cert: {tls_files['h1.crt']}
            metrics_key: {tls_files['other.key']}
            metrics_token_file: {token}
            """)
    text = str(err.value)
    assert "agent.yaml:4: metrics_key: " in text and "not the key of" in text
    assert f"agent.yaml:5: metrics_token_file: {token}: token file: the token file is " \
        "readable by every user" in text
