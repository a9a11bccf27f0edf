"""Credentials made for one run of the emulation (`onvm emulate [--tls]`,
tests): the REST API's bearer token and, with TLS, a small CA and the
certificates of every control channel, made with the `openssl` command
(Debian's openssl package; the `cryptography` package is not a dependency).

    creds = RunCredentials(run_dir, tls=True)
    config_text(topo, url, of_port, ws_port, **creds.controller_config())
    creds.store_env()        # {"ONVM_STORE_CA": ..., ...} for agents, status
    creds.rest(port, "GET", "/chains")

Files (all in RUN_DIR/credentials, mode 0700; keys 0600):
    api-token            the REST API's bearer token (controller.apiauth)
    ca.crt, ca.key       the run's CA, valid CERT_DAYS
    server.crt/.key      etcd members (client and peer), Ryu's OpenFlow
                         listener, the REST API: CN onvm-server,
                         SAN 127.0.0.1 and localhost (agents reach etcd as
                         127.0.0.1 through onvm.netns.StoreForwarder)
    client.crt/.key      store clients (controller, agents, the
                         emulation itself) and the OVS switches: no CN
                         (etcd's gateway refuses one when auth is on)
    store-password       (with TLS) etcd's root password: etcd runs with
                         auth enabled, every store client authenticates

Not here: checking tokens (controller.apiauth), where each file is used
(controller.run's config, onvm.services.EtcdCluster, onvm.emulate).
"""
from __future__ import annotations

import collections
import json
import os
import secrets
import ssl
import subprocess
import urllib.request

from contracts.store import AUTH_ENV, TLS_ENV, StoreAuth, StoreTLS
from controller.apiauth import make_token_file, read_token_file

CERT_DAYS = 2
KEY_ALGORITHM = "rsa:2048"        # what OVS, etcd (Go) and Python all take
SERVER_NAMES = "IP:127.0.0.1,DNS:localhost"

TLSFiles = collections.namedtuple(
    "TLSFiles", "ca ca_key server_cert server_key client_cert client_key")


class CertError(RuntimeError):
    """openssl failed; the message has its command and output."""


def openssl(*args, cwd=None):
    try:
        res = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd,
                             timeout=60)
    except FileNotFoundError:
        raise CertError("openssl not found: apt-get install openssl") from None
    if res.returncode != 0:
        raise CertError(f"openssl {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def _sign(directory, name, subject, extensions, days):
    """name.key and name.crt signed by directory/ca.*; returns (crt, key)."""
    key, csr, crt = (os.path.join(directory, f"{name}.{ext}") for ext in ("key", "csr", "crt"))
    ext_file = os.path.join(directory, f"{name}.ext")
    with open(ext_file, "w") as f:
        f.write("\n".join(extensions) + "\n")
    openssl("req", "-new", "-newkey", KEY_ALGORITHM, "-nodes", "-keyout", key,
            "-out", csr, "-subj", subject)
    openssl("x509", "-req", "-in", csr, "-CA", os.path.join(directory, "ca.crt"),
            "-CAkey", os.path.join(directory, "ca.key"), "-CAcreateserial",
            "-days", str(days), "-sha256", "-extfile", ext_file, "-out", crt)
    os.chmod(key, 0o600)
    for leftover in (csr, ext_file):
        os.unlink(leftover)
    return crt, key


def make_certs(directory, days=CERT_DAYS):
    """A CA, a server and a client certificate in `directory` (TLSFiles)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    ca, ca_key = os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key")
    openssl("req", "-x509", "-newkey", KEY_ALGORITHM, "-nodes", "-keyout", ca_key,
            "-out", ca, "-days", str(days), "-sha256", "-subj", "/CN=onvm run CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    os.chmod(ca_key, 0o600)
    server = _sign(directory, "server", "/CN=onvm-server", [
        f"subjectAltName={SERVER_NAMES}", "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        # etcd members are each other's clients on the peer port
        "extendedKeyUsage=serverAuth,clientAuth"], days)
    # No CN: with client-cert-auth and user/password auth both on, etcd's
    # HTTP gateway refuses a client certificate that has a CommonName.
    client = _sign(directory, "client", "/O=onvm/OU=onvm-client", [
        "basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=clientAuth"], days)
    return TLSFiles(ca, ca_key, *server, *client)


class RunCredentials:
    """The token (always) and the TLS files (with `tls`) of one run, and
    what each part is given of them.  See the module docstring."""

    def __init__(self, run_dir, tls=False):
        self.dir = os.path.join(run_dir, "credentials")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.token_file = make_token_file(self.dir)
        self.token = read_token_file(self.token_file, "api_token_file")
        self.tls = make_certs(self.dir) if tls else None
        self.password_file = None
        if tls:
            self.password_file = os.path.join(self.dir, "store-password")
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24) + "\n")

    @property
    def scheme(self):
        return "https" if self.tls else "http"

    def store_tls(self):
        """contracts.store.StoreTLS of a store client, None without TLS."""
        return StoreTLS(self.tls.ca, self.tls.client_cert, self.tls.client_key) \
            if self.tls else None

    def store_auth(self):
        """contracts.store.StoreAuth (etcd's root user), None without TLS."""
        return StoreAuth("root", self.password_file) if self.password_file else None

    def store_env(self):
        """The environment variables open_store reads, for child processes."""
        tls, auth = self.store_tls(), self.store_auth()
        return {**(dict(zip(TLS_ENV, tls)) if tls else {}),
                **(dict(zip(AUTH_ENV, auth)) if auth else {})}

    def controller_config(self):
        """Keyword arguments of controller.run.config_text."""
        onvm = {"api_token_file": self.token_file}
        if not self.tls:
            return {"onvm": onvm}
        t = self.tls
        onvm.update(api_cert=t.server_cert, api_key=t.server_key, store_ca=t.ca,
                    store_cert=t.client_cert, store_key=t.client_key,
                    store_user="root", store_password_file=self.password_file)
        return {"onvm": onvm, "ofp_tls": (t.server_key, t.server_cert, t.ca)}

    def etcd_args(self):
        """etcd's flags for TLS with client certificates, clients and peers."""
        if not self.tls:
            return []
        t = self.tls
        return ["--cert-file", t.server_cert, "--key-file", t.server_key,
                "--trusted-ca-file", t.ca, "--client-cert-auth",
                "--peer-cert-file", t.server_cert, "--peer-key-file", t.server_key,
                "--peer-trusted-ca-file", t.ca, "--peer-client-cert-auth"]

    def ovs_ssl(self):
        """(private key, certificate, CA) for `ovs-vsctl set-ssl`."""
        return (self.tls.client_key, self.tls.client_cert, self.tls.ca)

    def client_context(self):
        """An ssl.SSLContext that trusts the run's CA and shows the client
        certificate (etcd asks for one); None without TLS."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.tls.ca)
        context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        return context

    def rest_request(self, port, method, path, body=None):
        """A urllib Request to the REST API on 127.0.0.1:`port` with the token."""
        data = None if body is None else json.dumps(body).encode()
        return urllib.request.Request(
            f"{self.scheme}://127.0.0.1:{port}/onvm/v1{path}", data=data, method=method,
            headers={"Content-Type": "application/json",
                     "Authorization": f"Bearer {self.token}"})

