"""The production deployment files of `deploy/` (docs/deploy.md) do what
the docs say: the systemd units pass `systemd-analyze verify`, the env
examples set every variable the units read, the three example etcd members
form a cluster that grants the 1 s leases agents and controllers hold, and
every metric the Grafana dashboard queries is one a live agent serves
(scraped as a production Prometheus does: HTTPS and a bearer token; no
token or a wrong one is a 401), with per-chain labels.
"""
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from scapy.all import IP, TCP, UDP, Ether, wrpcap

from onvm import services

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(REPO, "deploy")
SYSTEMD = os.path.join(DEPLOY, "systemd")
DASHBOARD = os.path.join(DEPLOY, "grafana", "onvm-cluster.json")
INSTALLED_ONVM = "/opt/onvm-cluster/.venv/bin/onvm"
ETCD_MEMBERS = ("m1", "m2", "m3")


def read_env_file(path):
    """KEY=VALUE lines as systemd's EnvironmentFile= and etcd read them."""
    values = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values[key] = value
    return values


# ------------------------------------------------------------ systemd units

def unit_files():
    return sorted(os.path.join(SYSTEMD, n) for n in os.listdir(SYSTEMD)
                  if n.endswith((".service", ".socket")))


def test_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    onvm = os.path.join(os.path.dirname(sys.executable), "onvm")
    if not os.path.exists(onvm):
        pytest.skip(f"{onvm} is missing: `make build` installs the onvm command")
    units = []
    for path in unit_files():
        with open(path) as f:
            text = f.read()
        copy = tmp_path / os.path.basename(path)
        copy.write_text(text.replace(INSTALLED_ONVM, onvm))
        units.append(str(copy))
    assert {os.path.basename(u) for u in units} >= {
        "onvm-agent.service", "onvm-controller.service"}
    proc = subprocess.run([analyze, "verify", *units], capture_output=True, text=True,
                          timeout=60)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines()
            if str(tmp_path) in line or any(os.path.basename(u) in line for u in units)]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


@pytest.mark.parametrize("unit, example", [
    ("onvm-agent.service", "agent.env.example"),
    ("onvm-controller.service", "controller.env.example")])
def test_env_examples_set_every_variable_their_unit_reads(unit, example):
    with open(os.path.join(SYSTEMD, unit)) as f:
        text = f.read()
    exec_start = re.search(r"^ExecStart=(.*)$", text, re.M).group(1)
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", exec_start))
    assert {"ONVM_STORE"} <= used
    assert used == set(read_env_file(os.path.join(DEPLOY, example)))


# ---------------------------------------------------------------- etcd

def member_env(i, name, clients, peers, data_dir):
    """deploy/etcd/NAME.etcd.env with its management addresses moved to
    this machine's loopback and free ports."""
    env = {}
    for key, value in read_env_file(os.path.join(DEPLOY, "etcd", f"{name}.etcd.env")).items():
        value = value.replace(",http://127.0.0.1:2379", "")   # each member its own port
        for j, _ in enumerate(ETCD_MEMBERS):
            value = (value.replace(f"192.0.2.1{j + 1}:2379", f"127.0.0.1:{clients[j]}")
                     .replace(f"192.0.2.1{j + 1}:2380", f"127.0.0.1:{peers[j]}"))
        assert "192.0.2." not in value, f"{name}: {key}={value}: an address the test does not map"
        env[key] = value
    env["ETCD_DATA_DIR"] = data_dir
    return env


def etcd_call(url, path, body):
    request = urllib.request.Request(url + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.load(resp)


def etcd_healthy(url):
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as resp:
            return json.load(resp).get("health") == "true"
    except OSError:
        return False


def test_example_etcd_members_form_a_cluster_that_keeps_1s_leases(tmp_path):
    if not os.path.exists(services.ETCD_BIN):
        pytest.skip(f"{services.ETCD_BIN} is not installed (apt-get install etcd-server)")
    clients = [services.free_port() for _ in ETCD_MEMBERS]
    peers = [services.free_port() for _ in ETCD_MEMBERS]
    procs, logs = [], []
    try:
        for i, name in enumerate(ETCD_MEMBERS):
            env = member_env(i, name, clients, peers, str(tmp_path / name))
            logs.append(tmp_path / f"{name}.log")
            with open(logs[-1], "wb") as log:
                procs.append(subprocess.Popen(
                    [services.ETCD_BIN], env={"PATH": os.environ["PATH"], **env},
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        urls = [f"http://127.0.0.1:{port}" for port in clients]
        for url in urls:
            services.wait_for(lambda: etcd_healthy(url), 30, f"example etcd member at {url}")
        members = etcd_call(urls[0], "/v3/cluster/member/list", {})["members"]
        assert sorted(m["name"] for m in members) == list(ETCD_MEMBERS)
        # etcd raises a lease's TTL to its minimum: 1 here, 2 with its defaults
        granted = etcd_call(urls[1], "/v3/lease/grant", {"TTL": 1})
        assert int(granted["TTL"]) == 1
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = "".join(path.read_text(errors="replace") for path in logs)
    for line in text.splitlines():
        assert "unrecognized environment variable" not in line, line
    assert '"auto-compaction-mode":"periodic"' in text
    assert '"auto-compaction-retention":"1h0m0s"' in text
    assert '"quota-size-bytes":8589934592' in text


# ------------------------------------------------------------ the dashboard

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right",
                   "bool", "offset", "and", "or", "unless", "inf", "nan"}


def promql_metric_names(expr):
    """The metric names a PromQL expression reads: what is left once label
    matchers, ranges, grouping clauses, numbers, functions and keywords go."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                 # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)                           # matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)                          # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
                  " ", expr)
    expr = re.sub(r"(?<![\w:])(\d+(ms|[smhdwy]))+(?![\w:])", " ", expr)  # durations
    expr = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", expr)   # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", expr):
        rest = expr[match.end():].lstrip()
        if rest.startswith("(") or match.group().lower() in PROMQL_KEYWORDS:
            continue            # a function or aggregation, or a keyword
        names.add(match.group())
    return names


def dashboard_queries(dashboard):
    """Every PromQL of the dashboard: panel targets and query variables."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"]
            exprs.append(re.fullmatch(r"label_values\((.*),\s*\w+\)", query).group(1))
    return exprs


def test_promql_metric_names():
    assert promql_metric_names(
        'sum by (host, reason) (rate(onvm_drops_total{host=~"$host",reason!="x"}[1m])) / 1e6'
    ) == {"onvm_drops_total"}
    assert promql_metric_names(
        'count(a_b{x="sum(y)"}) > 0 and on (host) max without (nf) (c:d_total)') == {
            "a_b", "c:d_total"}
    assert promql_metric_names("onvm_flows offset 5m") == {"onvm_flows"}


def load_dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def test_dashboard_has_grafana_shape():
    d = load_dashboard()
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert d["uid"] and d["title"] and d["id"] is None
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["host"]["type"] == "query" and variables["host"]["multi"]
    source = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["host"]["datasource"] == source
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in d["panels"] if p["type"] != "row"]
    assert len(graphs) >= 10
    for p in d["panels"]:
        pos = p["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]
    for p in graphs:
        assert p["type"] in ("timeseries", "stat"), p["title"]
        assert p["datasource"] == source, p["title"]
        assert p["targets"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == source, p["title"]
            assert 'host=~"$host"' in t["expr"], (p["title"], t["expr"])
    titles = " ".join(p["title"] for p in graphs).lower()
    for topic in ("mpps", "drops by reason", "ring occupancy", "instances per",
                  "mpps per chain", "drops per chain", "instances per chain"):
        assert topic in titles
    assert variables["chain"]["type"] == "query" and variables["chain"]["multi"]
    for p in graphs:
        if "chain" in p["title"].lower():
            assert all('chain=~"$chain"' in t["expr"] and "by (chain)" in t["expr"]
                       for t in p["targets"]), p["title"]


def agent_plan():
    """h1 runs a firewall and a monitor on SPI 16, out of port 1."""
    return {
        "host": "h1", "generation": 1, "node_label": 16, "mac": "02:00:00:00:00:01",
        "instances": [{"id": 1, "nf": "firewall",
                       "config": {"rules_text": "deny tcp any any any 22\ndefault allow"}},
                      {"id": 2, "nf": "monitor"}],
        "classifiers": [{"spi": 16, "match": {"ipv4_dst": "10.0.1.0/24"}}],
        "hops": [{"spi": 16, "si": 255, "local": 1}, {"spi": 16, "si": 254, "local": 2},
                 {"spi": 16, "si": 253, "end": {"port": 1, "dst_mac": "02:00:00:00:00:04"}}],
        "uplink": 1,
    }


def scrape(url, proc, context=None, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=1, context=context) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError:
        raise
    except OSError:
        if proc.poll() is not None:
            raise services.GaveUp(f"the agent exited with {proc.returncode}: "
                                  f"{proc.stderr.read()[-2000:]}")
        return None


def secret(path, text, mode=0o600):
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        f.write(text + "\n")
    os.chmod(path, mode)
    return path


def agent_command(tmp_path, *flags):
    return [sys.executable, "-m", "onvm.cli", "agent", "--host", "h1", "--plan",
            str(tmp_path / "plan.json"), "--seconds", "60", *flags,
            "--", "--vdev", f"net_pcap0,rx_pcap={tmp_path}/in.pcap", "--vdev", "net_null0",
            "--no-huge", "-m", "256", "--file-prefix", f"onvmdeploy{os.getpid()}"]


def test_every_dashboard_metric_is_served_by_a_live_agent(tmp_path):
    from onvm.certs import make_certs
    wanted = set()
    for expr in dashboard_queries(load_dashboard()):
        wanted |= promql_metric_names(expr)
    assert wanted and all(name.startswith("onvm_") for name in wanted), wanted
    frames = ([Ether() / IP(dst="10.0.1.1") / UDP()] * 5
              + [Ether() / IP(dst="10.0.1.1") / TCP(dport=22)] * 5)
    wrpcap(str(tmp_path / "in.pcap"), frames)
    (tmp_path / "plan.json").write_text(json.dumps(agent_plan()))
    tls = make_certs(str(tmp_path / "tls"))
    token = "prometheus-scrape-token-0123456789"
    token_file = secret(str(tmp_path / "metrics-token"), token)
    port = services.free_port()
    proc = subprocess.Popen(
        agent_command(tmp_path, "--metrics-port", str(port), "--metrics-cert",
                      tls.server_cert, "--metrics-key", tls.server_key,
                      "--metrics-token-file", token_file),
        cwd=REPO, stderr=subprocess.PIPE, text=True)
    context = ssl.create_default_context(cafile=tls.ca)
    url = f"https://127.0.0.1:{port}/metrics"
    try:
        # until packets went through chain 16 (SPI; net_pcap replays its
        # file): half pass, half are dropped by its firewall
        def chain_counted():
            text = scrape(url, proc, context, token)
            found = dict(re.findall(r'^onvm_chain_packets_total\{chain="16",host="h1",'
                                    r'kind="(\w+)"\} (\S+)$', text or "", re.M))
            return (text, found) if float(found.get("drops", 0)) > 0 else None
        body, chain = services.wait_for(chain_counted, 30, "chain 16's packets in /metrics")
        assert 0 < float(chain["drops"]) < float(chain["in"]), chain
        # "in" is what the first NF (instance 1) takes in, from the same sample
        assert f'onvm_instance_packets_total{{chain="16",direction="rx",host="h1",' \
            f'instance="1",nf="firewall"}} {chain["in"]}' in body
        for wrong in (None, "not-the-token-at-all-0123456789"):
            with pytest.raises(urllib.error.HTTPError) as err:
                scrape(url, proc, context, wrong)
            assert err.value.code == 401
            assert err.value.headers["WWW-Authenticate"] == "Bearer"
        with pytest.raises(OSError):        # plain HTTP on the HTTPS port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    served = {line.split("{")[0].split(" ")[0] for line in body.splitlines()
              if line and not line.startswith("#")}
    assert wanted <= served, f"dashboard queries {sorted(wanted - served)}; agent serves {sorted(served)}"


def test_a_metrics_token_file_open_to_everyone_is_refused_before_starting(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps(agent_plan()))
    token_file = secret(str(tmp_path / "metrics-token"), "x" * 32, mode=0o644)
    res = subprocess.run(agent_command(tmp_path, "--metrics-port", "9", "--metrics-token-file",
                                       token_file),
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert f"{token_file}: --metrics-token-file: the token file is readable by every " \
        "user" in res.stderr, res.stderr


def test_chain_labels_of_shared_instances_and_reverse_paths():
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from contracts.wire import reverse_spi
    from host_agent.metrics import chain_label, chain_metrics, plan_chains
    plan = {"hops": [{"spi": 16, "si": 255, "local": 1}, {"spi": 16, "si": 254, "local": 3},
                     {"spi": 18, "si": 255, "local": 2}, {"spi": 18, "si": 254, "local": 3},
                     {"spi": reverse_spi(18), "si": 255, "local": 2},
                     {"spi": 20, "si": 255, "remote": [{"host": "h2"}]}]}
    serves, first = plan_chains(plan)
    assert serves == {1: {16}, 2: {18}, 3: {16, 18}}
    assert first == {16: {1}, 18: {2}}
    assert chain_label(serves[3]) == "16+18" and chain_label(()) == "none"
    instances = {i: {"rx": 100 * i, "drops": i} for i in (1, 2, 3)}

    class One:
        def collect(self):
            yield chain_metrics("h1", instances, serves, first)
    registry = CollectorRegistry()
    registry.register(One())
    text = generate_latest(registry).decode()
    # in: the first NF's rx; drops: instances of this chain alone (3 is shared)
    for line in ('{chain="16",host="h1",kind="in"} 100.0',
                 '{chain="16",host="h1",kind="drops"} 1.0',
                 '{chain="18",host="h1",kind="in"} 200.0',
                 '{chain="18",host="h1",kind="drops"} 2.0'):
        assert f"onvm_chain_packets_total{line}" in text, text
