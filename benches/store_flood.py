#!/usr/bin/env python3
"""Hostile-network load on ironboot's machine store, over loopback (run by store_flood.sh).

  flood    N `boot.ipxe` requests, each with an invented UUID and MAC and the longest
           serial, host name and domain the query allows (4-byte UTF-8 characters), over
           keep-alive connections spread over source addresses 127.0.<a>.<b>.
  real     one request from a machine that is not part of the flood, from its own address;
           exits 0 if /api/v1/machines then lists it (following `Link: rel="next"`).
  stall    C clients that send `GET /api/v1/machines` and never read; prints the server's
           RSS (from /proc/PID/status) before, while they hang, and after they close.

Standard library only, so it runs on a bare Debian machine.
"""

import argparse
import json
import random
import socket
import sys
import threading
import time
import urllib.parse

LONG = urllib.parse.quote("\U0001d54f" * 200)  # more than any stored field keeps


def http_get(sock, host, path):
    """One keep-alive GET; returns (status, headers dict, body bytes)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    f = sock.makefile("rb")
    status = int(f.readline().split()[1])
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                f.readline()
                break
            parts.append(f.read(size))
            f.readline()
        body = b"".join(parts)
    else:
        body = f.read()
    f.close()
    return status, headers, body


def connect(server, source):
    host, port = server.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind((source, 0))
    s.connect((host, int(port)))
    return s


def flood(args):
    sent = [0] * args.connections
    failed = [0] * args.connections
    per_conn = args.requests // args.connections
    rng_seed = args.seed

    def worker(i):
        rng = random.Random(rng_seed * 1000 + i)
        sock, source = None, None
        for j in range(per_conn):
            k = (i + j // args.per_source * args.connections) % args.sources
            want = f"127.1.{k // 250}.{1 + k % 250}" if args.sources > 1 else "127.0.0.1"
            if want != source and sock is not None:
                sock.close()
                sock = None
            source = want
            u = rng.getrandbits(128)
            uuid = f"{u:032x}"
            uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}"
            mac = "-".join(f"{b:02x}" for b in rng.getrandbits(48).to_bytes(6, "big"))
            path = (
                f"/ipxe/boot.ipxe?uuid={uuid}&mac={mac}&arch=x86_64"
                f"&serial={LONG}&hostname={LONG}&domain={LONG}"
            )
            try:
                if sock is None:
                    sock = connect(args.server, source)
                status, _, _ = http_get(sock, args.server, path)
                sent[i] += 1
                if status != 200:
                    failed[i] += 1
            except OSError:
                failed[i] += 1
                sock = None
        if sock:
            sock.close()

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    print(json.dumps({"requests": sum(sent), "failed": sum(failed), "seconds": round(took, 1)}))


def list_all(server, source):
    """Every machine, page by page; (ids, pages, largest page in bytes)."""
    ids, pages, largest = [], 0, 0
    path = "/api/v1/machines"
    sock = connect(server, source)
    while path:
        status, headers, body = http_get(sock, server, path)
        if status != 200:
            raise SystemExit(f"GET {path}: status {status}")
        pages += 1
        largest = max(largest, len(body))
        ids += [m["id"] for m in json.loads(body)]
        path = None
        for link in headers.get("link", "").split(","):
            if 'rel="next"' in link:
                path = link.split(">")[0].strip().lstrip("<")
                path = urllib.parse.urlsplit(path)
                path = path.path + "?" + path.query
    sock.close()
    return ids, pages, largest


def real(args):
    sock = connect(args.server, args.source)
    status, _, _ = http_get(
        sock, args.server, f"/ipxe/boot.ipxe?uuid={args.uuid}&mac=52-54-00-12-34-56&arch=x86_64"
    )
    sock.close()
    deadline = time.monotonic() + 10
    while True:
        ids, pages, largest = list_all(args.server, args.source)
        found = args.uuid in ids
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(json.dumps({"status": status, "recorded": found, "listed": len(ids), "pages": pages,
                      "largest_page_bytes": largest}))
    sys.exit(0 if found else 1)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def stall(args):
    before = rss_kib(args.pid)
    socks = []
    for i in range(args.clients):
        s = connect(args.server, "127.0.0.1")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET {args.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        socks.append(s)
    # Wait until every client has its answer's first bytes waiting (the server has built
    # what it holds for it), then until the RSS stops growing.
    peak, start = rss_kib(args.pid), time.monotonic()
    answered = set()
    while time.monotonic() - start < args.wait and len(answered) < len(socks):
        for i, s in enumerate(socks):
            if i not in answered:
                try:
                    if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                        answered.add(i)
                except BlockingIOError:
                    pass
        peak = max(peak, rss_kib(args.pid))
        time.sleep(0.5)
    stable_since = time.monotonic()
    while time.monotonic() - start < args.wait and time.monotonic() - stable_since < args.settle:
        time.sleep(0.5)
        now = rss_kib(args.pid)
        if now > peak * 1.01:
            stable_since = time.monotonic()
        peak = max(peak, now)
    held = rss_kib(args.pid)
    settled = time.monotonic() - stable_since >= args.settle
    for s in socks:
        s.close()
    time.sleep(2)
    print(json.dumps({"clients": args.clients, "path": args.path, "rss_before_mib": round(before / 1024, 1),
                      "rss_peak_mib": round(peak / 1024, 1),
                      "rss_held_mib": round(held / 1024, 1), "settled": settled,
                      "answered": len(answered),
                      "rss_after_close_mib": round(rss_kib(args.pid) / 1024, 1)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="ADDR:PORT of the HTTP API")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flood")
    f.add_argument("--requests", type=int, default=112000)
    f.add_argument("--connections", type=int, default=16)
    f.add_argument("--sources", type=int, default=1, help="source addresses 127.1.x.y")
    f.add_argument("--per-source", type=int, default=50,
                   help="requests on one connection before moving to the next source")
    f.add_argument("--seed", type=int, default=1)
    r = sub.add_parser("real")
    r.add_argument("--uuid", default="4c4c4544-0042-3510-8051-b7c04f4e3332")
    r.add_argument("--source", default="127.0.0.2")
    s = sub.add_parser("stall")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--clients", type=int, default=20)
    s.add_argument("--path", default="/api/v1/machines", help="what the clients ask for")
    s.add_argument("--wait", type=float, default=900, help="longest wait for answers and RSS")
    s.add_argument("--settle", type=float, default=10,
                   help="seconds without 1%% growth that count as settled")
    args = p.parse_args()
    {"flood": flood, "real": real, "stall": stall}[args.cmd](args)


if __name__ == "__main__":
    main()
