"""TLS on every control channel: the run's certificates (onvm.certs), the
store client's TLS files (contracts.store_etcd), and `onvm emulate --tls`
end to end: OVS speaks OpenFlow to Ryu over `ssl:`, every part reaches etcd
over https with a client certificate, the REST API answers over HTTPS with
the token, traffic flows and a chain change through REST reaches the store.
Plain-text attempts on each of the three channels are refused."""
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import requests

from conftest import started_emulation
from contracts.store import StoreError, StoreTLS, open_store, tls_from_env
from onvm import certs
from onvm.services import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINIMAL = os.path.join(ROOT, "topologies", "minimal.yaml")
OFPT_HELLO_13 = bytes([4, 0, 0, 8, 0, 0, 0, 1])


# --- the run's certificates ------------------------------------------------------

@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return certs.RunCredentials(str(tmp_path_factory.mktemp("creds")), tls=True)


def test_run_certificates_chain_to_the_run_ca_and_keys_are_private(creds):
    t = creds.tls
    out = certs.openssl("verify", "-CAfile", t.ca, t.server_cert, t.client_cert)
    assert out.split() == [f"{t.server_cert}:", "OK", f"{t.client_cert}:", "OK"]
    text = certs.openssl("x509", "-in", t.server_cert, "-noout", "-text")
    assert "IP Address:127.0.0.1" in text and "TLS Web Server Authentication" in text
    assert "TLS Web Client Authentication" in certs.openssl(
        "x509", "-in", t.client_cert, "-noout", "-text")
    for key in (t.ca_key, t.server_key, t.client_key, creds.token_file):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key
    assert stat.S_IMODE(os.stat(creds.dir).st_mode) == 0o700


def test_store_tls_files_are_checked_naming_the_file(creds, tmp_path):
    with pytest.raises(StoreError, match="^/nonexistent.pem: store TLS ca"):
        open_store("https://127.0.0.1:1", tls=StoreTLS("/nonexistent.pem", None, None))
    with pytest.raises(StoreError, match="the store URL is http://; use https://"):
        open_store("http://127.0.0.1:1", tls=creds.store_tls())
    with pytest.raises(StoreError, match="a client certificate needs its key"):
        open_store("https://127.0.0.1:1", tls=StoreTLS(creds.tls.ca, creds.tls.client_cert,
                                                       None))
    assert tls_from_env(creds.store_env()) == creds.store_tls()
    assert tls_from_env({}) is None


def test_an_https_etcd_refuses_clients_without_a_certificate(creds, tmp_path):
    from onvm.services import ETCD_BIN, EtcdCluster
    if not os.path.exists(ETCD_BIN):
        pytest.skip(f"{ETCD_BIN} is not installed")
    with EtcdCluster(1, workdir=str(tmp_path), tls=creds) as etcd:
        url = etcd.url
        assert url.startswith("https://127.0.0.1:")
        store = open_store(url, tls=creds.store_tls())
        store.put_chain({"name": "c"})
        assert store.chains() == {"c": {"name": "c"}}
        store.close()
        plain = url.replace("https://", "http://")
        with pytest.raises(requests.exceptions.RequestException):
            requests.post(plain + "/v3/kv/range", json={"key": "Lw=="}, timeout=5)
        # TLS, trusting the CA, but no client certificate: the handshake fails
        with pytest.raises(requests.exceptions.RequestException):
            session = requests.Session()
            session.trust_env = False
            session.post(url + "/v3/kv/range", json={"key": "Lw=="}, timeout=5,
                         verify=creds.tls.ca)


# --- onvm emulate --tls ------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_emu(tmp_path_factory, run_prefix):
    with started_emulation(MINIMAL, run_prefix + "s", workdir=tmp_path_factory.mktemp("tls-emu"),
                           tls=True) as emulation:
        yield emulation


def _received(emu):
    return emu.received("web").get("received", 0)


@pytest.mark.ovs
@pytest.mark.etcd
@pytest.mark.netns
@pytest.mark.timeout(240)
def test_emulation_with_tls_everywhere(tls_emu):
    emu = tls_emu
    # OpenFlow: the switch's controller target is ssl:, and it is connected
    targets = emu.ovs.vsctl("--columns=target,is_connected", "--format=json", "list",
                            "Controller")
    rows = json.loads(targets)["data"]
    assert rows and all(t.startswith("ssl:127.0.0.1:") and c for t, c in rows), rows
    # traffic flows through the chain
    start = _received(emu)
    wait_for(lambda: _received(emu) > start + 50, 30, "traffic through the chain web")

    # a chain change through the REST API (HTTPS with the token) reaches the store
    assert emu.rest("GET", "/health") == {"status": "ok"}
    emu.raise_rate("web", 1.5)
    wait_for(lambda: emu.store.chains()["web"]["mpps"] == 1.5, 10, "the changed chain stored")
    start = _received(emu)
    wait_for(lambda: _received(emu) > start + 50, 30, "traffic after the chain change")

    # REST: plain HTTP gets no answer; HTTPS without the token is a 401
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{emu.ws_port}/onvm/v1/health", timeout=5)
    req = urllib.request.Request(f"https://127.0.0.1:{emu.ws_port}/onvm/v1/chains/web",
                                 method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5, context=emu.credentials.client_context())
    assert err.value.code == 401
    assert "web" in emu.store.chains()

    # OpenFlow: a plain-TCP hello gets no OpenFlow hello back
    with socket.create_connection(("127.0.0.1", emu.of_port), timeout=5) as sock:
        sock.sendall(OFPT_HELLO_13)
        try:
            first = sock.recv(8)
        except (ConnectionResetError, socket.timeout):
            first = b""
    assert first[:1] != b"\x04", f"an OpenFlow answer on the TLS port: {first!r}"

    # etcd: the store URL is https; `onvm status` reaches it with the client cert
    assert emu.etcd.url.startswith("https://")
    res = subprocess.run([sys.executable, "-m", "onvm.cli", "status", "--store", emu.etcd.url,
                          "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env=dict(os.environ, PYTHONPATH=ROOT, **emu.credentials.store_env()))
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout.splitlines()[-1])
    assert status["chains"]["web"]["mpps_declared"] == 1.5
    res = subprocess.run([sys.executable, "-m", "onvm.cli", "status", "--store", emu.etcd.url,
                          "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert res.returncode == 1 and "etcd does not answer" in res.stderr, res.stderr

    # etcd runs with user/password auth: `onvm status` with its flags (CA,
    # client certificate, user, password file) gets in; with the certificate
    # but no user, or a wrong password, it is refused with the reason
    t, auth = emu.credentials.tls, emu.credentials.store_auth()
    plain_env = {k: v for k, v in os.environ.items() if not k.startswith("ONVM_STORE_")}
    plain_env["PYTHONPATH"] = ROOT
    tls_flags = ["--store-ca", t.ca, "--store-cert", t.client_cert, "--store-key",
                 t.client_key]

    def status(*flags):
        return subprocess.run([sys.executable, "-m", "onvm.cli", "status", "--store",
                               emu.etcd.url, "--json", *tls_flags, *flags],
                              capture_output=True, text=True, cwd=ROOT, timeout=60,
                              env=plain_env)
    res = status("--store-user", auth.user, "--store-password-file", auth.password_file)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1])["chains"]["web"]["mpps_declared"] == 1.5
    res = status()
    assert res.returncode == 1 and "authentication enabled" in res.stderr, res.stderr
    wrong = os.path.join(emu.dir, "wrong-password")
    with open(os.open(wrong, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write("not the password\n")
    res = status("--store-user", "root", "--store-password-file", wrong)
    assert res.returncode == 1 and "'root'" in res.stderr and \
        "authentication failed" in res.stderr and wrong in res.stderr, res.stderr
    assert not emu.exits()


# --- wrong or expired certificates, refused before anything starts ---------------

def test_check_pair_and_ca(creds, tmp_path):
    from contracts.tlsfiles import TLSFileError, check_ca, check_pair
    t = creds.tls
    check_pair(t.server_cert, t.server_key, "--ofp-cert", "--ofp-key")
    check_ca(t.ca, "--ofp-ca")
    later = time.time() + (certs.CERT_DAYS + 1) * 86400
    with pytest.raises(TLSFileError, match=f"^{t.server_cert}: --ofp-cert: the "
                                           "certificate expired on 20"):
        check_pair(t.server_cert, t.server_key, "--ofp-cert", "--ofp-key", now=later)
    with pytest.raises(TLSFileError, match=f"^{t.server_cert}: --ofp-cert: the "
                                           "certificate is valid only from 20"):
        check_pair(t.server_cert, t.server_key, "--ofp-cert", "--ofp-key", now=1e9)
    with pytest.raises(TLSFileError, match=f"^{t.client_key}: --ofp-key: not the key "
                                           f"of {t.server_cert} \\(--ofp-cert\\)"):
        check_pair(t.server_cert, t.client_key, "--ofp-cert", "--ofp-key")
    with pytest.raises(TLSFileError, match=f"^{t.server_key}: not a PEM certificate"):
        check_pair(t.server_key, t.server_key, "--ofp-cert", "--ofp-key")
    with pytest.raises(TLSFileError, match=f"^{creds.token_file}: --ofp-ca: no CA "
                                           "certificate in it"):
        check_ca(creds.token_file, "--ofp-ca")
    with pytest.raises(StoreError, match=f"^{t.server_key}: store TLS key "
                                         r"\(ONVM_STORE_KEY\): not the key of"):
        open_store("https://127.0.0.1:1", tls=StoreTLS(t.ca, t.client_cert, t.server_key))


@pytest.mark.parametrize("flags, message", [
    (["--ofp-cert", "{server_key}", "--ofp-key", "{server_key}"],
     "onvm controller: {server_key}: not a PEM certificate"),
    (["--api-cert", "{server_cert}", "--api-key", "{client_key}"],
     "onvm controller: {client_key}: --api-key: not the key of {server_cert} (--api-cert)"),
    (["--ofp-cert", "{server_cert}"], "onvm controller: --ofp-cert and --ofp-key go together"),
    (["--store-ca", "/nonexistent.crt"],
     "onvm controller: /nonexistent.crt: --store-ca: cannot read the file"),
])
def test_onvm_controller_refuses_bad_tls_files_before_starting(creds, flags, message):
    names = creds.tls._asdict()
    res = subprocess.run([sys.executable, "-m", "onvm.cli", "controller", "--topology",
                          MINIMAL, "--store", "memory://",
                          *[f.format(**names) for f in flags]],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith(message.format(**names)), res.stderr


def openflow_hello(port, context):
    """The first bytes Ryu sends over TLS after our hello, or the error."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                tls.sendall(OFPT_HELLO_13)
                return tls.recv(8)
    except OSError as err:          # ssl.SSLError, a reset, a timeout
        return err


@pytest.mark.etcd
def test_onvm_controller_with_every_tls_flag(creds, tmp_path):
    """`onvm controller`'s flags, as docs/deploy.md gives them, against an
    https etcd with client certificates: REST over HTTPS with the token,
    OpenFlow with TLS only, the chain stored through the https store."""
    from onvm.services import ETCD_BIN, EtcdCluster, free_port
    if not os.path.exists(ETCD_BIN):
        pytest.skip(f"{ETCD_BIN} is not installed")
    t = creds.tls
    ofp, wsapi = free_port(), free_port()
    with EtcdCluster(1, workdir=str(tmp_path), tls=creds) as etcd:
        log = open(tmp_path / "controller.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "onvm.cli", "controller", "--topology", MINIMAL,
             "--store", etcd.url, "--ofp-tcp-listen-port", str(ofp), "--wsapi-port", str(wsapi),
             "--api-token-file", creds.token_file, "--api-cert", t.server_cert,
             "--api-key", t.server_key, "--ofp-cert", t.server_cert, "--ofp-key", t.server_key,
             "--ofp-ca", t.ca, "--store-ca", t.ca, "--store-cert", t.client_cert,
             "--store-key", t.client_key], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            context = creds.client_context()

            def chains():
                assert proc.poll() is None, (tmp_path / "controller.log").read_text()
                req = creds.rest_request(wsapi, "GET", "/chains")
                with urllib.request.urlopen(req, timeout=5, context=context) as resp:
                    return json.loads(resp.read())
            assert "web" in wait_for(chains, 60, "the chains over HTTPS")
            store = open_store(etcd.url, tls=creds.store_tls())
            assert "web" in store.chains()            # the controller wrote it over https
            store.close()
            # OpenFlow: Ryu says hello to a switch with a certificate of the
            # CA, and refuses a TLS client without one
            assert openflow_hello(ofp, creds.client_context())[:1] == b"\x04"
            answer = openflow_hello(ofp, ssl.create_default_context(cafile=t.ca))
            assert isinstance(answer, OSError), answer
        finally:
            proc.terminate()
            proc.wait(10)
