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
                                    prints JSON {"ms": kill to answer, "attempts": n, "peer": ...,
                                    "t_lost": wall-clock time of the kill (s)}; SPORT 0: any port
  cut NS HOST PORT SPORT            the same, but instead of a kill, both of namespace NS's lab
                                    links (ctl0, dp0) go down in one `ip -batch`: a host lost
                                    without closing anything (the clock starts before the cut)
  hold N HOST PORT                  N long-lived TCP connections to the echo service; prints
                                    {"connected": n}, then for every line "check" on stdin sends a
                                    line on each and prints {"ok": n, "failed": n, "backends": {...},
                                    "fail_ms_p50": ms, "fail_ms_max": ms} (how long a failed
                                    connection took to fail: a RST is milliseconds, silence 2 s)
  udp HOST PORT N                   N datagrams to HOST:PORT; prints JSON {"replies": [...], "lost": n}
  session HOST PORT                 one long-lived TCP connection to the echo service: every line
                                    read on stdin is sent, the reply printed (flushed) on stdout;
                                    a reset prints "<reset after MS ms>" (MS from the send)
  remove-endpoint FILE ADDR         rewrite an EndpointSlice manifest without endpoint ADDR
  neigh IFACE ADDR... [--timeout S] one ARP request (IPv4) / neighbour solicitation (IPv6, to the
                                    solicited-node group) per ADDR from IFACE; prints JSON
                                    {ADDR: [every distinct MAC that answered within S (0.5)]}
  neighwatch IFACE ADDR... [--interval-ms M] [--seconds S]
                                    such a round every M ms (50) for S seconds (default: until
                                    SIGTERM/SIGINT); prints JSON {"t0": wall-clock start (s),
                                    "interval_ms": M, "probe_mac": ..., "addrs": {ADDR: {"rounds",
                                    "zero": rounds unanswered, "double": rounds answered by 2+
                                    MACs, "owners": [[MAC, ms of its first round], ...] (a new
                                    entry per change of the single answering MAC), "moves",
                                    "max_gap_ms", "slowest_answer_ms", "doubles": [[ms, [MACs]],
                                    ...] (first 20), "announce": [[MAC, ms], ...] (gratuitous ARPs
                                    / unsolicited NAs seen for ADDR, first 100)}}}; times are ms
                                    after t0, a round's time is its send time
  The probes send from their own MAC and from per-round nonce addresses (see Prober), so the
  namespace's neighbour cache never sees their answers and a late answer counts for its round.
"""
import json
import os
import resource
import signal
import socket
import struct
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
    t0, wall = time.monotonic(), time.time()
    lose()
    attempts = 0
    while True:
        attempts += 1
        try:
            backend, peer = get(host, port, sport, timeout=0.05)
            ms = (time.monotonic() - t0) * 1000
            print(json.dumps({"ms": round(ms, 1), "attempts": attempts, "peer": peer, "backend": backend,
                              "t_lost": wall}))
            return
        except OSError:
            if time.monotonic() - t0 > limit:
                print(json.dumps({"ms": None, "attempts": attempts, "peer": None, "backend": None,
                                  "t_lost": wall}))
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
        ok, failed, backends, fail_ms = 0, 0, {}, []
        for i, s in enumerate(socks):
            t0 = time.monotonic()
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
                fail_ms.append((time.monotonic() - t0) * 1000)
        fail_ms.sort()
        print(json.dumps({"ok": ok, "failed": failed, "backends": backends,
                          "fail_ms_p50": round(fail_ms[len(fail_ms) // 2], 1) if fail_ms else None,
                          "fail_ms_max": round(fail_ms[-1], 1) if fail_ms else None}), flush=True)


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
        t0 = time.monotonic()
        reply = b""
        try:
            s.sendall(line.encode())
            while not reply.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except socket.timeout:
            pass
        except ConnectionResetError:
            print(f"<reset after {(time.monotonic() - t0) * 1000:.1f} ms>", flush=True)
            continue
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


# --- neighbour probes (L2 mode, issue 15) ---------------------------------------------------
#
# Requests go out from a packet socket with a probe MAC of their own (02:51 + the PID), never
# the interface's: answers are unicast to that MAC, so the namespace's kernel drops them as
# "other host" and its neighbour cache only ever learns what it resolves itself or what
# gratuitous ARP / unsolicited NA tell it. Each round's requests carry a nonce as their source
# address (the host part .128 + r of the interface's IPv4 /24 or larger, ::f00 + r of its IPv6
# /64, r = round mod 64; the lab uses none of these), and answers name it (ARP: target protocol
# address; NA: IPv6 destination), so a late answer counts for the round it answers.

ETH_P_ARP, ETH_P_IPV6 = 0x0806, 0x86DD
PACKET_OUTGOING = 4
NONCES = 64
NA_SOLICITED = 0x40


def mac_str(b):
    return ":".join(f"{x:02x}" for x in b)


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class Prober:
    """ARP requests and neighbour solicitations for a set of addresses, in rounds."""

    def __init__(self, iface, addrs):
        import ipaddress
        self.addrs = [ipaddress.ip_address(a) for a in addrs]
        self.mac = bytes([0x02, 0x51]) + (os.getpid() & 0xFFFFFFFF).to_bytes(4, "big")
        info = json.loads(subprocess.run(["ip", "-j", "addr", "show", "dev", iface], check=True,
                                         capture_output=True, text=True).stdout)
        nets = {4: None, 6: None}
        for a in info[0].get("addr_info", []):
            i = ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
            if a.get("scope") == "global" and nets[i.version] is None:
                nets[i.version] = i.network
        self.base = {}
        for v in {a.version for a in self.addrs}:
            n = nets[v]
            if n is None or n.prefixlen > (24 if v == 4 else 64):
                sys.exit(f"neigh: {iface} needs a global IPv{v} address on a /{24 if v == 4 else 64}"
                         " or larger subnet (the requests' sources are spare addresses of it)")
            self.base[v] = n.network_address + (128 if v == 4 else 0xF00)
        self.socks = {}
        for v, proto in ((4, ETH_P_ARP), (6, ETH_P_IPV6)):
            if v in self.base:
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
                s.bind((iface, proto))
                s.setblocking(False)
                self.socks[v] = s
        self.rounds = []  # per round: (send time, {addr: {mac: first answer time}})
        self.announce = {a: [] for a in self.addrs}  # gratuitous ARPs / unsolicited NAs seen

    def nonce(self, v, r):
        return self.base[v] + r % NONCES

    def send_round(self):
        r = len(self.rounds)
        self.rounds.append((time.monotonic(), {a: {} for a in self.addrs}))
        for a in self.addrs:
            src = self.nonce(a.version, r).packed
            if a.version == 4:
                arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, self.mac, src, b"\0" * 6, a.packed)
                frame = b"\xff" * 6 + self.mac + struct.pack("!H", ETH_P_ARP) + arp
                frame += b"\0" * (60 - len(frame))
            else:
                t = a.packed
                dst = bytes.fromhex("ff0200000000000000000001ff") + t[13:]
                icmp = struct.pack("!BBHI16sBB6s", 135, 0, 0, 0, t, 1, 1, self.mac)
                pseudo = src + dst + struct.pack("!I3xB", len(icmp), 58)
                icmp = icmp[:2] + struct.pack("!H", csum(pseudo + icmp)) + icmp[4:]
                ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 255, src, dst)
                frame = b"\x33\x33" + dst[12:] + self.mac + struct.pack("!H", ETH_P_IPV6) + ip6 + icmp
            self.socks[a.version].send(frame)

    def answer(self, v, nonce_ip, addr, mac, now):
        """Records that addr answered (with mac) the latest round whose nonce is nonce_ip."""
        import ipaddress
        off = int(ipaddress.ip_address(nonce_ip)) - int(self.base[v])
        n = len(self.rounds)
        if not 0 <= off < NONCES or n == 0 or addr not in self.rounds[0][1]:
            return
        r = n - 1 - ((n - 1 - off) % NONCES)
        if r >= 0:
            self.rounds[r][1][addr].setdefault(mac, now)

    def receive(self, until):
        """Reads answers until the monotonic time `until`."""
        import ipaddress
        import select
        socks = list(self.socks.values())
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select(socks, [], [], left)
            for s in ready:
                while True:
                    try:
                        f, meta = s.recvfrom(2048)
                    except BlockingIOError:
                        break
                    if meta[2] != PACKET_OUTGOING:
                        self.parse(f, time.monotonic(), ipaddress)

    def parse(self, f, now, ipaddress):
        et = int.from_bytes(f[12:14], "big")
        to_us = f[0:6] == self.mac
        if et == ETH_P_ARP and len(f) >= 42:
            op, sha, spa, tpa = int.from_bytes(f[20:22], "big"), f[22:28], f[28:32], f[38:42]
            addr = ipaddress.ip_address(spa)
            if spa == tpa and addr in self.announce:
                self.announce[addr].append((mac_str(sha), now))
            elif op == 2 and to_us:
                self.answer(4, tpa, addr, mac_str(sha), now)
        elif et == ETH_P_IPV6 and len(f) >= 78 and f[20] == 58 and f[54] == 136:
            target = ipaddress.ip_address(f[62:78])
            mac, i = f[6:12], 78
            while i + 8 <= len(f) and f[i + 1]:
                if f[i] == 2:
                    mac = f[i + 2:i + 8]
                i += 8 * f[i + 1]
            if not f[58] & NA_SOLICITED and target in self.announce:
                self.announce[target].append((mac_str(mac), now))
            elif to_us:
                self.answer(6, f[38:54], target, mac_str(mac), now)


def neigh(iface, addrs, timeout=0.5):
    p = Prober(iface, addrs)
    p.send_round()
    p.receive(time.monotonic() + timeout)
    print(json.dumps({str(a): sorted(m) for a, m in p.rounds[0][1].items()}))


def neighwatch(iface, addrs, interval_ms=50, seconds=None):
    """Probing rounds every interval_ms for `seconds` (or until SIGTERM/SIGINT); prints JSON."""
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    p = Prober(iface, addrs)
    step = interval_ms / 1000
    wall0, t0 = time.time(), time.monotonic()
    end = t0 + seconds if seconds is not None else None
    nxt = t0
    while not stop and (end is None or nxt < end):
        p.send_round()
        nxt = max(nxt + step, time.monotonic())
        p.receive(nxt if end is None else min(nxt, end))
    # Late answers still count for their rounds.
    p.receive(time.monotonic() + max(0.2, 4 * step))
    done = time.monotonic()

    def ms(t):
        return round((t - t0) * 1000, 1)

    out = {}
    for a in p.addrs:
        zero = double = max_gap = 0
        owners, doubles, gap_start, slowest = [], [], None, 0.0
        for ts, ans in p.rounds:
            macs = ans[a]
            if macs:
                slowest = max(slowest, max(macs.values()) - ts)
            if not macs:
                zero += 1
                gap_start = ts if gap_start is None else gap_start
                continue
            if gap_start is not None:
                max_gap = max(max_gap, ts - gap_start)
                gap_start = None
            if len(macs) > 1:
                double += 1
                if len(doubles) < 20:
                    doubles.append([ms(ts), sorted(macs)])
                continue
            mac = next(iter(macs))
            if not owners or owners[-1][0] != mac:
                owners.append([mac, ms(ts)])
        if gap_start is not None:
            max_gap = max(max_gap, done - gap_start)
        out[str(a)] = {
            "rounds": len(p.rounds), "zero": zero, "double": double,
            "owners": owners, "moves": max(0, len(owners) - 1),
            "max_gap_ms": round(max_gap * 1000, 1), "slowest_answer_ms": round(slowest * 1000, 1),
            "doubles": doubles, "announce": [[m, ms(t)] for m, t in p.announce[a][:100]],
        }
    print(json.dumps({"t0": wall0, "interval_ms": interval_ms, "probe_mac": mac_str(p.mac), "addrs": out}))


def opt(a, name, default):
    return a[a.index(name) + 1] if name in a else default


def positional(a):
    """The arguments that are neither options (--x) nor their values."""
    out, skip = [], False
    for x in a:
        if skip:
            skip = False
        elif x.startswith("--"):
            skip = True
        else:
            out.append(x)
    return out


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
    elif a[0] == "neigh":
        timeout = float(opt(a, "--timeout", 0.5))
        neigh(a[1], positional(a[2:]), timeout)
    elif a[0] == "neighwatch":
        seconds = opt(a, "--seconds", None)
        neighwatch(a[1], positional(a[2:]), int(opt(a, "--interval-ms", 50)),
                   None if seconds is None else float(seconds))
    elif a[0] == "remove-endpoint":
        remove_endpoint(a[1], a[2])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
