#!/usr/bin/env python3
"""Real servers for Sluice's namespace lab (scripts/lab), and a probe that checks them.

  lab-backend.py serve --name sl-b1 [--state-dir /run/sluice-lab] [--pidfile F] [--access-log]
  lab-backend.py probe [--quiet] NAME=ADDR [NAME=ADDR ...]

`serve` runs, in one process, dual-stack (IPv4 and IPv6 on one `::` socket with IPV6_V6ONLY=0)
servers bound to every address of the namespace:

  TCP 8080   HTTP: any GET/HEAD answers 200 with the body "<name>\\n" (HTTP/1.0, connection closed
             after each response). Headers: X-Backend (name), X-Client-Addr (peer address),
             X-Server-Addr / X-Server-Port (the address and port the connection was made to, so a
             DSR test sees the VIP there and a NAT test sees the backend's own address).
  TCP 30080  the same HTTP server (plays a Kubernetes nodePort).
  TCP 10256  kube-proxy-like health check: GET /healthz answers 200 {"localEndpoints": 1}, or
             503 {"localEndpoints": 0} while the file <state-dir>/<name>.unhealthy exists.
             Other paths answer 404.
  TCP 9000   echo, per line: every line received is answered with "<name>: <line>\\n". A last line
             without a newline is answered when the client shuts down its sending side.
  UDP 9001   echo, per datagram: answers "<name>: <payload>" from the address the datagram was
             sent to (IP_PKTINFO), so replies from a DSR VIP on lo carry the VIP as source.

Only the Python standard library is used. Addresses printed in headers and logs are plain
IPv4 for IPv4 peers (not ::ffff:a.b.c.d).
"""

import argparse
import http.server
import ipaddress
import json
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
import time

HTTP_PORTS = (8080, 30080)
HEALTH_PORT = 10256
TCP_ECHO_PORT = 9000
UDP_ECHO_PORT = 9001


def plain(addr):
    """'::ffff:10.99.0.11' -> '10.99.0.11'; anything else unchanged (scope id dropped)."""
    host = addr.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return addr
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def log(msg):
    sys.stderr.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), msg))
    sys.stderr.flush()


class DualStackMixin:
    """Bind one IPv6 socket to `::` that also accepts IPv4 (IPV6_V6ONLY=0)."""

    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # Plain TCPServer.server_bind: HTTPServer's would call getfqdn(), a DNS lookup that can
        # stall inside a namespace with no route to the resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = "localhost"
        self.server_port = port


class DualStackHTTPServer(DualStackMixin, socketserver.ThreadingMixIn, http.server.HTTPServer):
    pass


class DualStackTCPServer(DualStackMixin, socketserver.ThreadingTCPServer):
    pass


class Config:
    name = "backend"
    state_dir = "/run/sluice-lab"
    access_log = False


class BaseHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "sluice-lab-backend"
    sys_version = ""

    def version_string(self):
        return self.server_version
    timeout = 60

    def log_message(self, fmt, *args):
        if Config.access_log:
            log("%s %s:%d %s" % (Config.name, plain(self.client_address[0]),
                                self.server.server_port, fmt % args))

    def send_body(self, code, body, ctype):
        data = body.encode()
        local = self.connection.getsockname()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.send_header("X-Backend", Config.name)
        self.send_header("X-Client-Addr", plain(self.client_address[0]))
        self.send_header("X-Server-Addr", plain(local[0]))
        self.send_header("X-Server-Port", str(local[1]))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class AppHandler(BaseHandler):
    def do_GET(self):
        self.send_body(200, Config.name + "\n", "text/plain")

    do_HEAD = do_GET


class HealthHandler(BaseHandler):
    def do_GET(self):
        if self.path.split("?", 1)[0] != "/healthz":
            self.send_body(404, "not found\n", "text/plain")
            return
        unhealthy = os.path.exists(os.path.join(Config.state_dir, Config.name + ".unhealthy"))
        n = 0 if unhealthy else 1
        body = json.dumps({
            "service": {"namespace": "lab", "name": Config.name},
            "localEndpoints": n,
            "serviceProxyHealthy": True,
        })
        self.send_body(503 if unhealthy else 200, body + "\n", "application/json")

    do_HEAD = do_GET


class EchoHandler(socketserver.StreamRequestHandler):
    def handle(self):
        prefix = (Config.name + ": ").encode()
        if Config.access_log:
            log("%s tcp-echo connection from %s" % (Config.name, plain(self.client_address[0])))
        while True:
            try:
                line = self.rfile.readline(65536)
            except OSError:
                return
            if not line:
                return
            if not line.endswith(b"\n"):
                line += b"\n"
            try:
                self.wfile.write(prefix + line)
            except OSError:
                return


def udp_echo(sock):
    prefix = (Config.name + ": ").encode()
    pktinfo_len = 20  # struct in6_pktinfo: 16-byte address + unsigned int ifindex
    while True:
        try:
            data, anc, _flags, peer = sock.recvmsg(65535, socket.CMSG_SPACE(pktinfo_len))
        except InterruptedError:
            continue
        except OSError as e:
            log("%s udp-echo recvmsg: %s" % (Config.name, e))
            continue
        cmsgs = []
        for level, ctype, cdata in anc:
            if level == socket.IPPROTO_IPV6 and ctype == socket.IPV6_PKTINFO:
                # Reply from the address the datagram was sent to (works for v4-mapped too).
                cmsgs.append((level, ctype, cdata[:pktinfo_len]))
        if Config.access_log:
            log("%s udp-echo %d bytes from %s" % (Config.name, len(data), plain(peer[0])))
        try:
            sock.sendmsg([prefix + data], cmsgs, 0, peer)
        except OSError as e:
            log("%s udp-echo sendmsg to %s: %s" % (Config.name, plain(peer[0]), e))


def serve(args):
    Config.name = args.name
    Config.state_dir = args.state_dir
    Config.access_log = args.access_log

    servers = []
    for port in HTTP_PORTS:
        servers.append(DualStackHTTPServer(("::", port), AppHandler))
    servers.append(DualStackHTTPServer(("::", HEALTH_PORT), HealthHandler))
    servers.append(DualStackTCPServer(("::", TCP_ECHO_PORT), EchoHandler))

    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.bind(("::", UDP_ECHO_PORT))

    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    threading.Thread(target=udp_echo, args=(udp,), daemon=True).start()

    if args.pidfile:
        tmp = args.pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % os.getpid())
        os.rename(tmp, args.pidfile)

    log("%s serving pid %d: http %s, health %d, tcp-echo %d, udp-echo %d (v4+v6)"
        % (Config.name, os.getpid(), "/".join(map(str, HTTP_PORTS)), HEALTH_PORT,
           TCP_ECHO_PORT, UDP_ECHO_PORT))

    stop = threading.Event()

    def on_signal(signum, _frame):
        log("%s stopping (signal %d)" % (Config.name, signum))
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(3600):
        pass
    if args.pidfile:
        try:
            os.unlink(args.pidfile)
        except OSError:
            pass
    return 0


# ---------------------------------------------------------------------------------------- probe

def sockaddr(addr, port):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return family, (addr, port)


def http_get(addr, port, path, timeout):
    family, sa = sockaddr(addr, port)
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sa)
        host = "[%s]" % addr if family == socket.AF_INET6 else addr
        s.sendall(("GET %s HTTP/1.0\r\nHost: %s:%d\r\n\r\n" % (path, host, port)).encode())
        buf = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode(errors="replace")


def tcp_echo(addr, port, timeout):
    family, sa = sockaddr(addr, port)
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sa)
        s.sendall(b"probe\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace").rstrip("\n")


def udp_echo_probe(addr, port, timeout):
    family, sa = sockaddr(addr, port)
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(sa)  # connected: a reply from any other source address is not accepted
        s.send(b"probe")
        return s.recv(65535).decode(errors="replace")


def probe_one(name, addr, timeout):
    """Returns (all_ok, [text per server])."""
    results = []
    ok = True
    want = name + "\n"
    for label, port in (("http", 8080), ("nodeport", 30080)):
        try:
            status, body = http_get(addr, port, "/", timeout)
            good = status == 200 and body == want
            results.append("%s:%d %s" % (label, port, "ok" if good else "BAD(%d %r)" % (status, body)))
            ok &= good
        except Exception as e:  # noqa: BLE001 - report anything as a failure
            results.append("%s:%d FAIL(%s)" % (label, port, e))
            ok = False
    try:
        status, body = http_get(addr, HEALTH_PORT, "/healthz", timeout)
        n = json.loads(body).get("localEndpoints")
        good = (status, n) in ((200, 1), (503, 0))
        state = "healthy" if status == 200 else "UNHEALTHY(flag file)"
        results.append("healthz:%d %s" % (HEALTH_PORT, state if good else "BAD(%d %r)" % (status, body)))
        ok &= good
    except Exception as e:  # noqa: BLE001
        results.append("healthz:%d FAIL(%s)" % (HEALTH_PORT, e))
        ok = False
    for label, port, fn in (("tcp-echo", TCP_ECHO_PORT, tcp_echo), ("udp-echo", UDP_ECHO_PORT, udp_echo_probe)):
        try:
            got = fn(addr, port, timeout)
            good = got == name + ": probe"
            results.append("%s:%d %s" % (label, port, "ok" if good else "BAD(%r)" % got))
            ok &= good
        except Exception as e:  # noqa: BLE001
            results.append("%s:%d FAIL(%s)" % (label, port, e))
            ok = False
    return ok, results


def probe(args):
    all_ok = True
    for target in args.targets:
        name, _, addr = target.partition("=")
        if not addr:
            print("probe: targets are NAME=ADDR, got %r" % target, file=sys.stderr)
            return 2
        ok, results = probe_one(name, addr, args.timeout)
        all_ok &= ok
        if not args.quiet:
            print("  %-6s %-14s %s" % (name, addr, "  ".join(results)))
    return 0 if all_ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run every server of one backend")
    s.add_argument("--name", required=True)
    s.add_argument("--state-dir", default="/run/sluice-lab")
    s.add_argument("--pidfile")
    s.add_argument("--access-log", action="store_true", help="log every request to stderr")
    q = sub.add_parser("probe", help="check every server of the given backends")
    q.add_argument("--quiet", action="store_true")
    q.add_argument("--timeout", type=float, default=1.0)
    q.add_argument("targets", nargs="+", metavar="NAME=ADDR")
    args = p.parse_args()
    return serve(args) if args.cmd == "serve" else probe(args)


if __name__ == "__main__":
    sys.exit(main())
