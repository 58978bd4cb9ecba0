#!/usr/bin/python3
"""Client-side tools for the lab (run inside a client namespace with `ip netns exec`).

  http N URL [--timeout S]          N sequential HTTP GETs, each on a new connection; prints
                                    JSON {"backends": {name: count}, "peers": {X-Client-Addr: count},
                                    "errors": n, "first_error": ...}
  get HOST PORT [--sport P]         one HTTP GET (from source port P); prints JSON
                                    {"backend": name, "peer": X-Client-Addr}
  loop HOST PORT SECONDS            new HTTP connections back to back for SECONDS; prints JSON
                                    {"ok": n, "errors": n, "first_error": ..., "peers": {...}}
  failover PID HOST PORT SPORT      SIGKILL PID, then try a new HTTP connection from source port
                                    SPORT every 5 ms (50 ms connect timeout) until one answers;
                                    prints JSON {"ms": kill to answer, "attempts": n, "peer": ...}
  cut NS HOST PORT SPORT            the same, but instead of a kill, both of namespace NS's lab
                                    links (ctl0, dp0) go down in one `ip -batch`: a host lost
                                    without closing anything (the clock starts before the cut)
  hold N HOST PORT                  N long-lived TCP connections to the echo service; prints
                                    {"connected": n}, then for every line "check" on stdin sends a
                                    line on each and prints {"ok": n, "failed": n, "backends": {...}}
  udp HOST PORT N                   N datagrams to HOST:PORT; prints JSON {"replies": [...], "lost": n}
  session HOST PORT                 one long-lived TCP connection to the echo service: every line
                                    read on stdin is sent, the reply printed (flushed) on stdout
  remove-endpoint FILE ADDR         rewrite an EndpointSlice manifest without endpoint ADDR
"""
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def http(n, url, timeout=2.0):
    counts, peers, errors, first = {}, {}, 0, None
    for _ in range(n):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                name = r.read().decode().strip()
                counts[name] = counts.get(name, 0) + 1
                peer = r.headers.get("X-Client-Addr")
                peers[peer] = peers.get(peer, 0) + 1
        except Exception as e:  # noqa: BLE001 - any failure counts
            errors += 1
            first = first or repr(e)
    print(json.dumps({"backends": dict(sorted(counts.items())), "peers": dict(sorted(peers.items())),
                      "errors": errors, "first_error": first}))


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def get(host, port, sport=0, timeout=2.0):
    """One HTTP/1.0 GET on a new connection; returns (backend, X-Client-Addr)."""
    s = socket.socket(family(host), socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sport:
            s.bind(("::" if ":" in host else "0.0.0.0", sport))
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    if not head.startswith("HTTP/1.") or " 200 " not in head.split("\r\n")[0]:
        raise OSError(f"bad response {head[:60]!r}")
    peer = None
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "x-client-addr":
            peer = v.strip()
    return body.strip(), peer


def loop(host, port, seconds):
    ok, errors, first, peers = 0, 0, None, {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            _, peer = get(host, port, timeout=1.0)
            ok += 1
            peers[peer] = peers.get(peer, 0) + 1
        except OSError as e:
            errors += 1
            first = first or repr(e)
    print(json.dumps({"ok": ok, "errors": errors, "first_error": first, "peers": peers}))


def failover(lose, host, port, sport, limit=30.0):
    """Calls lose(), then retries a new connection every 5 ms until one is answered."""
    t0 = time.monotonic()
    lose()
    attempts = 0
    while True:
        attempts += 1
        try:
            backend, peer = get(host, port, sport, timeout=0.05)
            ms = (time.monotonic() - t0) * 1000
            print(json.dumps({"ms": round(ms, 1), "attempts": attempts, "peer": peer, "backend": backend}))
            return
        except OSError:
            if time.monotonic() - t0 > limit:
                print(json.dumps({"ms": None, "attempts": attempts, "peer": None, "backend": None}))
                sys.exit(1)
            time.sleep(0.005)


def hold(n, host, port):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 64)), hard))
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection((host, port), timeout=2))
        except OSError:
            pass
    print(json.dumps({"connected": len(socks)}), flush=True)
    for line in sys.stdin:
        if line.strip() != "check":
            continue
        ok, failed, backends = 0, 0, {}
        for i, s in enumerate(socks):
            try:
                s.settimeout(2)
                s.sendall(f"ping {i}\n".encode())
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = s.recv(256)
                    if not chunk:
                        raise OSError("closed")
                    reply += chunk
                name = reply.decode().split(":")[0]
                backends[name] = backends.get(name, 0) + 1
                ok += 1
            except OSError:
                failed += 1
        print(json.dumps({"ok": ok, "failed": failed, "backends": backends}), flush=True)


def udp(host, port, n):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    replies, lost = [], 0
    for i in range(n):
        s.sendto(f"datagram {i}".encode(), (host, port))
        try:
            data, _ = s.recvfrom(2048)
            replies.append(data.decode().strip())
        except socket.timeout:
            lost += 1
    print(json.dumps({"replies": replies, "lost": lost}))


def session(host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.create_connection((host, port), timeout=5)
    f = s.makefile("rwb", buffering=0)
    print("connected", flush=True)
    for line in sys.stdin:
        s.sendall(line.encode())
        reply = b""
        try:
            while not reply.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except socket.timeout:
            pass
        print(reply.decode().strip() or "<no reply>", flush=True)
    del f, fam


def remove_endpoint(path, addr):
    lines = open(path).read().splitlines(keepends=True)
    out, skip = [], False
    for line in lines:
        if line.startswith("  - addresses:"):
            skip = f'"{addr}"' in line
        elif not line.startswith("    "):
            skip = False
        if not skip:
            out.append(line)
    open(path, "w").write("".join(out))


def main():
    a = sys.argv[1:]
    if not a:
        print(__doc__)
        sys.exit(2)
    if a[0] == "http":
        timeout = float(a[a.index("--timeout") + 1]) if "--timeout" in a else 2.0
        http(int(a[1]), a[2], timeout)
    elif a[0] == "get":
        sport = int(a[a.index("--sport") + 1]) if "--sport" in a else 0
        backend, peer = get(a[1], int(a[2]), sport)
        print(json.dumps({"backend": backend, "peer": peer}))
    elif a[0] == "loop":
        loop(a[1], int(a[2]), float(a[3]))
    elif a[0] == "failover":
        failover(lambda: os.kill(int(a[1]), signal.SIGKILL), a[2], int(a[3]), int(a[4]))
    elif a[0] == "cut":
        cut = ["ip", "-n", a[1], "-batch", "-"]
        links = "link set ctl0 down\nlink set dp0 down\n"
        failover(lambda: subprocess.run(cut, input=links, text=True, check=True), a[2], int(a[3]), int(a[4]))
    elif a[0] == "hold":
        hold(int(a[1]), a[2], int(a[3]))
    elif a[0] == "udp":
        udp(a[1], int(a[2]), int(a[3]))
    elif a[0] == "session":
        session(a[1], int(a[2]))
    elif a[0] == "remove-endpoint":
        remove_endpoint(a[1], a[2])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
