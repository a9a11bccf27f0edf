"""Credentials on the REST API (controller.apiauth, controller.apps.rest_api):
token files checked before anything listens, requests without the token
refused with 401 and nothing changed, read-only tokens limited to GET, the
health check open; first through Ryu's WSGIApplication in this process,
then against a real `onvm controller` (ryu-manager with the chain manager
on a memory:// store)."""
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from webob import Request

from contracts.store import open_store
from controller import apiauth
from controller.apps import rest_api
from controller.core import ClusterCore
from controller.topology import load_topology
from onvm.services import free_port, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINIMAL = os.path.join(ROOT, "topologies", "minimal.yaml")
WRITE = "write-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"


def token_file(path, text, mode=0o600):
    path.write_text(text)
    path.chmod(mode)
    return str(path)


# --- token files ---------------------------------------------------------------

def test_a_generated_token_is_0600_in_a_0700_dir_and_kept_across_starts(tmp_path):
    state = tmp_path / "state"
    first = apiauth.load_tokens(state_dir=str(state))
    assert first.source == str(state / apiauth.TOKEN_NAME)
    assert stat.S_IMODE(os.stat(first.source).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert len(first.write) >= 40           # token_urlsafe(32): 43 characters
    assert apiauth.load_tokens(state_dir=str(state)).write == first.write
    assert apiauth.load_tokens(state_dir=str(tmp_path / "other")).write != first.write


@pytest.mark.parametrize("text, mode, message", [
    (None, 0o600, "{path}: api_token_file: cannot read the token file: No such file"),
    (WRITE + "\n", 0o644, "{path}: api_token_file: the token file is readable by every "
                          "user (mode 0644); run: chmod 600 {path}"),
    ("\n# a comment\n", 0o600, "{path}: api_token_file: the token file is empty"),
    ("# token\nshort\n", 0o600, "{path}:2: api_token_file: a token is one word of at "
                                "least 16 characters"),
    (f"{WRITE}\n{READ}\n", 0o600, "{path}: api_token_file: one token expected, found 2"),
])
def test_a_bad_token_file_is_refused_naming_file_and_option(tmp_path, text, mode, message):
    path = tmp_path / "token"
    if text is not None:
        token_file(path, text, mode)
    with pytest.raises(apiauth.AuthError) as err:
        apiauth.load_tokens(str(path))
    assert str(err.value).startswith(message.format(path=path)), str(err.value)


def test_read_tokens_several_and_never_the_write_token(tmp_path):
    write = token_file(tmp_path / "w", WRITE + "\n")
    read = token_file(tmp_path / "r", f"# monitoring\n{READ}\n{READ}-2\n", 0o640)
    tokens = apiauth.load_tokens(write, read)
    assert tokens.read == (READ.encode(), f"{READ}-2".encode())
    same = token_file(tmp_path / "same", WRITE + "\n")
    with pytest.raises(apiauth.AuthError, match="holds the write token"):
        apiauth.load_tokens(write, same)


@pytest.mark.parametrize("method, header, expected", [
    ("GET", None, 401), ("GET", "", 401), ("GET", f"Basic {WRITE}", 401),
    ("GET", "Bearer", 401), ("DELETE", "Bearer nope-not-the-token-at-all", 401),
    ("DELETE", f"Bearer {WRITE}x", 401), ("DELETE", f"Bearer {WRITE}", None),
    ("GET", f"bearer  {WRITE} ", None), ("GET", f"Bearer {READ}", None),
    ("HEAD", f"Bearer {READ}", None), ("PUT", f"Bearer {READ}", 403),
    ("DELETE", f"Bearer {READ}", 403), ("POST", f"Bearer {READ}", 403),
])
def test_authorize(method, header, expected):
    tokens = apiauth.Tokens(WRITE.encode(), (READ.encode(),))
    refusal = apiauth.authorize(tokens, method, header)
    assert (refusal and refusal[0]) == expected, refusal


# --- through Ryu's WSGIApplication, against the real cluster core --------------

@pytest.fixture
def app():
    store = open_store("memory://")
    core = ClusterCore(load_topology(MINIMAL), store)
    core.step(0.0, True)                 # leads: seeds the file's chain
    wsgi = rest_api.WSGIApplication()
    rest_api.register(wsgi, lambda: core, apiauth.Tokens(WRITE.encode(), (READ.encode(),)))

    def call(method, path, token=None, body=None):
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        req = Request.blank("/onvm/v1" + path, method=method, headers=headers)
        if body is not None:
            req.body, req.content_type = json.dumps(body).encode(), "application/json"
        resp = req.get_response(wsgi)
        assert resp.content_type == "application/json", resp.body
        return resp.status_int, json.loads(resp.body), resp.headers
    call.store = store
    return call


def test_no_token_or_a_wrong_one_is_401_and_changes_nothing(app):
    before = app.store.chains()
    assert "web" in before
    for token in (None, "wrong-token-0123456789abcdef"):
        for method, path, body in (("DELETE", "/chains/web", None),
                                   ("DELETE", "/chains/web?traffic=forward", None),
                                   ("PUT", "/chains/web", dict(before["web"], mpps=2.0)),
                                   ("POST", "/moves", {"host": "h1", "instance": 1, "to": "h2"}),
                                   ("GET", "/chains", None), ("GET", "/topology", None)):
            status, reply, headers = app(method, path, token, body)
            assert status == 401, (method, path, reply)
            assert set(reply) == {"error"}
            assert headers["WWW-Authenticate"].startswith("Bearer")
    assert app.store.chains() == before


def test_read_token_gets_but_cannot_change(app):
    status, chains, _ = app("GET", "/chains", READ)
    assert status == 200 and "web" in chains
    before = app.store.chains()
    status, reply, _ = app("DELETE", "/chains/web", READ)
    assert (status, reply) == (403, {"error": "a read-only token may only GET and HEAD, "
                                              "not DELETE"})
    assert app.store.chains() == before
    status, reply, _ = app("DELETE", "/chains/web", WRITE)
    assert status == 200 and reply["retired"] is True


def test_health_needs_no_token(app):
    assert app("GET", "/health")[:2] == (200, {"status": "ok"})


# --- a real `onvm controller` ------------------------------------------------------

def http(url, method="GET", token=None, context=None):
    """(status, JSON body) of one request."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def listening_addresses(port):
    """The local addresses something listens on at TCP `port` (ss)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines()}


def start_controller(tmp_path, *flags):
    ofp, wsapi = free_port(), free_port()
    log = open(tmp_path / "controller.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "onvm.cli", "controller", "--topology",
                             MINIMAL, "--store", "memory://", "--ofp-tcp-listen-port", str(ofp),
                             "--wsapi-port", str(wsapi), *flags],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc, f"http://127.0.0.1:{wsapi}/onvm/v1", wsapi


def test_onvm_controller_refuses_requests_without_the_token(tmp_path):
    write = token_file(tmp_path / "api-token", WRITE + "\n")
    read = token_file(tmp_path / "read-tokens", READ + "\n")
    proc, url, port = start_controller(tmp_path, "--api-token-file", write,
                                       "--api-read-token-file", read)
    try:
        def chains():
            assert proc.poll() is None, (tmp_path / "controller.log").read_text()
            status, body = http(url + "/chains", token=WRITE)
            return status == 200 and "web" in body and body
        before = wait_for(chains, 60, "onvm controller's REST API with the chain web")
        assert http(url + "/health") == (200, {"status": "ok"})
        assert listening_addresses(port) == {"127.0.0.1"}     # --wsapi-host's default
        status, reply = http(url + "/chains/web", "DELETE")
        assert status == 401 and "missing credentials" in reply["error"]
        assert http(url + "/chains/web", "DELETE", "wrong-token-0123456789abcdef") == \
            (401, {"error": "wrong token"})
        assert http(url + "/chains", token=READ) == (200, before)
        assert http(url + "/chains/web", "DELETE", READ)[0] == 403
        assert http(url + "/chains", token=WRITE) == (200, before)    # nothing changed
        status, reply = http(url + "/chains/web", "DELETE", WRITE)
        assert (status, reply["retired"]) == (200, True)
    finally:
        proc.terminate()
        proc.wait(10)


def test_onvm_controller_makes_a_token_when_given_none(tmp_path):
    proc, url, _ = start_controller(tmp_path, "--state-dir", str(tmp_path / "state"))
    path = tmp_path / "state" / apiauth.TOKEN_NAME
    try:
        def up():
            assert proc.poll() is None, (tmp_path / "controller.log").read_text()
            return http(url + "/health")[0] == 200
        wait_for(up, 60, "onvm controller's health check")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert f"bearer token in {path}" in (tmp_path / "controller.log").read_text()
        assert http(url + "/topology")[0] == 401
        assert http(url + "/topology", token=path.read_text().strip())[0] == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_onvm_controller_refuses_a_world_readable_token_file(tmp_path):
    path = token_file(tmp_path / "api-token", WRITE + "\n", 0o644)
    res = subprocess.run([sys.executable, "-m", "onvm.cli", "controller", "--topology", MINIMAL,
                          "--store", "memory://", "--api-token-file", path],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith(f"onvm controller: {path}: api_token_file: the token file "
                                 f"is readable by every user (mode 0644)"), res.stderr
