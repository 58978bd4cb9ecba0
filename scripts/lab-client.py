#!/usr/bin/python3
"""Client-side tools for the lab (run inside a client namespace with `ip netns exec`).

  http N URL [--timeout S]          N sequential HTTP GETs, each on a new connection; prints
                                    JSON {"backends": {name: count}, "errors": n, "first_error": ...}
  udp HOST PORT N                   N datagrams to HOST:PORT; prints JSON {"replies": [...], "lost": n}
  session HOST PORT                 one long-lived TCP connection to the echo service: every line
                                    read on stdin is sent, the reply printed (flushed) on stdout
  remove-endpoint FILE ADDR         rewrite an EndpointSlice manifest without endpoint ADDR
"""
import json
import socket
import sys
import urllib.request


def http(n, url, timeout=2.0):
    counts, errors, first = {}, 0, None
    for _ in range(n):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                name = r.read().decode().strip()
                counts[name] = counts.get(name, 0) + 1
        except Exception as e:  # noqa: BLE001 - any failure counts
            errors += 1
            first = first or repr(e)
    print(json.dumps({"backends": dict(sorted(counts.items())), "errors": errors, "first_error": first}))


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
