"""Real TCP for the emulation: an HTTP server for each application server
and a TCP client for each chain that carries TCP, each a small process run
inside a Mininet node's network namespace (`python -m onvm.web serve|get`).

The server (Python's threaded http.server) answers `GET /<n>` with a body
of n bytes that names it (`body(name, n)`, the same bytes every time) and
`GET /id` with what `id` prints for root (a reply an IDS must recognise).
Every answer carries headers naming the server and the client address and
port it saw.  It counts, per client address, the requests it answered.

The client opens a connection at a set rate (or a set number of them), sends
one GET, reads the whole response and checks it: status 200, the server's
name, and the exact body that server must send.  A connection is ok only
then; anything else (refused, reset, timed out, short or wrong body) is a
failure with its reason.  It counts per server and per address the servers
say they saw.

Both report by rewriting a small JSON status file a few times a second
(onvm.traffic's write_status).

Not here: which server or client runs where (webplan.py), starting them
(emulate.py).
"""
from __future__ import annotations

import argparse
import http.server
import socket
import socketserver
import sys
import threading
import time

from onvm.traffic import read_rate, read_status, write_status

ROOT_ID = b"uid=0(root) gid=0(root) groups=0(root)\n"
ID_PATH = "/id"
MAX_BODY = 1 << 20
REPORT_S = 0.2
TIMEOUT_S = 5.0
KEEP_ERRORS = 20
SERVER_HEADER = "X-Onvm-Server"
SAW_HEADER = "X-Onvm-Client"


def body(name, n):
    """The n bytes a server called `name` sends for GET /<n>."""
    unit = f"{name} serves byte ".encode()
    out = bytearray()
    while len(out) < n:
        out += unit + b"%d\n" % len(out)
    return bytes(out[:n])


class Counts:
    """Thread-safe counters written as a status file."""

    def __init__(self, status_path, **fixed):
        self.status_path = status_path
        self.fixed = fixed
        self.lock = threading.Lock()
        self.data = {}

    def add(self, key, sub=None, by=1):
        with self.lock:
            if sub is None:
                self.data[key] = self.data.get(key, 0) + by
            else:
                table = self.data.setdefault(key, {})
                table[sub] = table.get(sub, 0) + by

    def note(self, key, text):
        with self.lock:
            items = self.data.setdefault(key, [])
            items.append(text)
            del items[:-KEEP_ERRORS]

    def write(self, **extra):
        with self.lock:
            status = {**self.fixed, **self.data, "time": time.time(), **extra}
            write_status(self.status_path, status)


def handler_class(name, counts):
    class Handler(http.server.BaseHTTPRequestHandler):
        # HTTP/1.1: a client that asks (hold) keeps its connection for more
        # requests; an HTTP/1.0 request (get) is answered and closed.
        protocol_version = "HTTP/1.1"
        server_version = "onvm-web"

        def do_GET(self):
            client = f"{self.client_address[0]}:{self.client_address[1]}"
            counts.add("clients", self.client_address[0])
            if self.path == ID_PATH:
                payload = ROOT_ID
            else:
                try:
                    n = int(self.path.lstrip("/"))
                except ValueError:
                    n = -1
                if not 0 <= n <= MAX_BODY:
                    counts.add("bad_requests")
                    self.send_error(404, f"GET /<n> with 0 <= n <= {MAX_BODY}, or {ID_PATH}")
                    return
                payload = body(name, n)
            counts.add("served")
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header(SERVER_HEADER, name)
            self.send_header(SAW_HEADER, client)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass
    return Handler


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class Server6(Server):
    """The same on IPv6 alone (beside an IPv4 Server on the same port)."""
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


def serve(name, ports, status_path, bind="0.0.0.0", stop=None, ipv6=False):
    """Serve on every port of `ports` (also on IPv6 with `ipv6`) until
    `stop` (a threading.Event) is set, or forever; the status counts
    requests per client address."""
    counts = Counts(status_path, name=name, ports=list(ports))
    servers = [Server((bind, port), handler_class(name, counts)) for port in ports]
    if ipv6:
        servers += [Server6(("::", port), handler_class(name, counts)) for port in ports]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    stop = stop or threading.Event()
    try:
        while not stop.wait(REPORT_S) and not Stopped.flag:
            counts.write()
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()
        counts.write(done=True)


def parse_response(raw):
    """(status code, headers {lower name: value}, body) of an HTTP/1.x
    response; ValueError when it is not one."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("no end of headers")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP status line: {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def check(path, raw):
    """(server name, address the server saw) of a correct response to GET
    `path`; ValueError saying what is wrong otherwise."""
    code, headers, got = parse_response(raw)
    if code != 200:
        raise ValueError(f"HTTP {code}")
    name = headers.get(SERVER_HEADER.lower())
    if not name:
        raise ValueError("no server name in the response")
    want = ROOT_ID if path == ID_PATH else body(name, int(path.lstrip("/")))
    if len(got) != len(want):
        raise ValueError(f"body of {len(got)} bytes, not {len(want)}")
    if got != want:
        raise ValueError("wrong body bytes")
    return name, headers.get(SAW_HEADER.lower(), "?").rsplit(":", 1)[0]


def fetch(dst, port, path, src=None, timeout=TIMEOUT_S):
    """One connection, one GET, the whole response (until the server closes)."""
    with socket.create_connection((dst, port), timeout=timeout,
                                  source_address=(src, 0) if src else None) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {dst}\r\n\r\n".encode())
        chunks = []
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def get(dst, port, path, status_path, rate, count=None, src=None, rate_path=None,
        timeout=TIMEOUT_S, stop=None):
    """Open connections to dst:port at `rate` a second (re-read from
    `rate_path` twice a second; 0 pauses), `count` of them in all or until
    stopped; each in its own thread.  Returns the last status."""
    counts = Counts(status_path, dst=dst, port=port, path=path, src=src)
    for key in ("ok", "failed", "started"):
        counts.add(key, by=0)
    stop = stop or threading.Event()
    threads = []

    def one():
        try:
            server, saw = check(path, fetch(dst, port, path, src, timeout))
        except (OSError, ValueError) as err:
            counts.add("failed")
            counts.note("errors", f"{type(err).__name__}: {err}")
            return
        counts.add("ok")
        counts.add("servers", server)
        counts.add("seen_as", saw)

    started, last_report, last_rate = 0, 0.0, 0.0
    t_from, due_done = time.monotonic(), 0
    while not stop.is_set() and not Stopped.flag and (count is None or started < count):
        now = time.monotonic()
        if rate_path and now - last_rate >= 0.5:
            new = read_rate(rate_path, rate)
            if new != rate:
                rate, t_from, due_done = new, now, 0
            last_rate = now
        due = int((now - t_from) * rate) - due_done
        for _ in range(max(0, min(due, (count or sys.maxsize) - started))):
            t = threading.Thread(target=one, daemon=True)
            t.start()
            threads.append(t)
            started += 1
            due_done += 1
            counts.add("started")
        threads = [t for t in threads if t.is_alive()]
        if now - last_report >= REPORT_S:
            counts.write()
            last_report = now
        time.sleep(0.01)
    for t in threads:
        t.join(timeout + 1)
    counts.write(done=True)
    return read_status(status_path)


def _read_response(sock, deadline):
    """One whole HTTP/1.1 response from a kept connection (its body by
    Content-Length); ValueError or OSError when there is none."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += _recv(sock, deadline)
    head, _, rest = raw.partition(b"\r\n\r\n")
    _, headers, _ = parse_response(head + b"\r\n\r\n")
    length = int(headers.get("content-length", "-1"))
    if not 0 <= length <= MAX_BODY:
        raise ValueError("no usable Content-Length")
    while len(rest) < length:
        rest += _recv(sock, deadline)
    return head + b"\r\n\r\n" + rest[:length], headers


def _recv(sock, deadline):
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    data = sock.recv(65536)
    if not data:
        raise ValueError("connection closed by the other end")
    return data


def hold(dst, port, path, status_path, connections, every, src=None,
         timeout=TIMEOUT_S, stop=None):
    """Open `connections` TCP connections to dst:port and keep them: every
    `every` seconds each sends one more GET `path` on its own connection.
    A connection is checked on each answer: the same server, and the same
    address and port as the server saw first (a NAT that forgot its
    mapping would show another port); it fails for good on a reset, a
    time-out or a wrong answer.  The status counts "open", "requests",
    "failed", "server_changed", "address_changed" and the errors."""
    counts = Counts(status_path, dst=dst, port=port, path=path, src=src,
                    connections=connections)
    for key in ("open", "requests", "failed", "server_changed", "address_changed"):
        counts.add(key, by=0)
    stop = stop or threading.Event()
    request = f"GET {path} HTTP/1.1\r\nHost: {dst}\r\n\r\n".encode()

    def keep(i):
        first = None
        try:
            with socket.create_connection((dst, port), timeout=timeout,
                                          source_address=(src, 0) if src else None) as s:
                while not stop.is_set() and not Stopped.flag:
                    s.sendall(request)
                    raw, headers = _read_response(s, time.monotonic() + timeout)
                    check(path, raw)
                    seen = (headers.get(SERVER_HEADER.lower()), headers.get(SAW_HEADER.lower()))
                    if first is None:
                        first = seen
                        counts.add("open")
                    elif seen[0] != first[0]:
                        raise ValueError(f"answered by {seen[0]}, first by {first[0]}")
                    elif seen[1] != first[1]:
                        counts.add("address_changed")
                        raise ValueError(f"the server saw {seen[1]}, first {first[1]}")
                    counts.add("requests")
                    stop.wait(every)
        except (OSError, ValueError) as err:
            if "answered by" in str(err):
                counts.add("server_changed")
            counts.add("failed")
            counts.note("errors", f"connection {i}: {type(err).__name__}: {err}")

    threads = []
    for i in range(connections):
        t = threading.Thread(target=keep, args=(i,), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(0.02)
    while not stop.is_set() and not Stopped.flag:
        counts.write()
        time.sleep(REPORT_S)
    for t in threads:
        t.join(timeout + every + 1)
    counts.write(done=True)
    return read_status(status_path)


class Stopped:
    """Set by SIGTERM/SIGINT in the processes: loops end, a last status is written."""
    flag = False


def main(argv=None):
    import signal
    p = argparse.ArgumentParser(prog="python -m onvm.web", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", required=True)
    s.add_argument("--port", type=int, action="append", required=True)
    s.add_argument("--status", required=True)
    s.add_argument("--ipv6", action="store_true", help="also serve on IPv6")
    g = sub.add_parser("get")
    g.add_argument("--dst", required=True)
    g.add_argument("--port", type=int, default=80)
    g.add_argument("--path", default="/2000")
    g.add_argument("--src")
    g.add_argument("--rate", type=float, default=5.0, help="connections a second")
    g.add_argument("--rate-file")
    g.add_argument("--count", type=int)
    g.add_argument("--timeout", type=float, default=TIMEOUT_S)
    g.add_argument("--status", required=True)
    k = sub.add_parser("hold", help="keep connections open, a GET on each every few seconds")
    k.add_argument("--dst", required=True)
    k.add_argument("--port", type=int, default=80)
    k.add_argument("--path", default="/2000")
    k.add_argument("--src")
    k.add_argument("--connections", type=int, default=20)
    k.add_argument("--every", type=float, default=0.5, help="seconds between GETs")
    k.add_argument("--timeout", type=float, default=TIMEOUT_S)
    k.add_argument("--status", required=True)
    args = p.parse_args(argv)

    def handler(*_):
        Stopped.flag = True
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if args.what == "serve":
        serve(args.name, args.port, args.status, ipv6=args.ipv6)
        return 0
    if args.what == "hold":
        status = hold(args.dst, args.port, args.path, args.status, args.connections,
                      args.every, args.src, args.timeout)
        return 0 if status and not status.get("failed") else 1
    status = get(args.dst, args.port, args.path, args.status, args.rate, args.count,
                 args.src, args.rate_file, args.timeout)
    return 0 if status and not status.get("failed") else 1


if __name__ == "__main__":
    sys.exit(main())
