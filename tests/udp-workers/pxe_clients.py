#!/usr/bin/env python3
"""Clients for tests/it/udp_workers.rs, run inside the test's client network namespace.

Subcommands (each prints one JSON object on stdout):
  dhcp  broadcast --count PXE DHCPDISCOVERs (distinct MACs and xids) out of --iface from
        port 68, then listen --listen seconds and count every BOOTP reply per xid:
        {"sent": n, "replies": {xid_hex: count}, "other": count}
  tftp  --clients concurrent read transfers of --file from --host:69, one socket (so one
        source port) each, lock-step with blksize 1432; each transfer's bytes are checked
        against the local file --expect. {"ok": n, "failed": [reasons], "tids": [ports]}
Exit status 0 when the exchange could be carried out (the caller judges the counts), 2 on
a local error.
"""

import argparse
import json
import socket
import struct
import sys
import threading
import time


def discover(xid, mac):
    head = struct.pack("!BBBBIHHIIII", 1, 1, 6, 0, xid, 0, 0x8000, 0, 0, 0, 0)
    chaddr = mac + b"\0" * 10
    opts = bytes([53, 1, 1])
    vendor = b"PXEClient:Arch:00000:UNDI:002001"
    opts += bytes([60, len(vendor)]) + vendor
    opts += bytes([93, 2, 0, 0])
    opts += bytes([94, 3, 1, 2, 1])
    opts += bytes([97, 17, 0]) + bytes([0x57, 0xA7, 0xC0, 0x00] + [0] * 10) + struct.pack("!H", xid & 0xFFFF)
    opts += bytes([255])
    return head + chaddr + b"\0" * 192 + b"\x63\x82\x53\x63" + opts


def cmd_dhcp(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
    s.bind(("0.0.0.0", 68))
    xids = []
    for i in range(args.count):
        xid = 0x5EED0000 + i
        mac = bytes([0x52, 0x54, 0x00, 0x77, i >> 8 & 0xFF, i & 0xFF])
        s.sendto(discover(xid, mac), ("255.255.255.255", 67))
        xids.append(xid)
        time.sleep(args.gap)
    replies = {"%08x" % x: 0 for x in xids}
    other = 0
    end = time.monotonic() + args.listen
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data = s.recv(4096)
        except socket.timeout:
            break
        if len(data) >= 8 and data[0] == 2:
            key = "%08x" % struct.unpack("!I", data[4:8])[0]
            if key in replies:
                replies[key] += 1
                continue
        other += 1
    print(json.dumps({"sent": len(xids), "replies": replies, "other": other}))


def fetch(host, name, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    rrq = struct.pack("!H", 1) + name.encode() + b"\0octet\0blksize\x001432\0"
    server = (host, 69)
    blksize = 512
    data = bytearray()
    expect = 1
    tid = None
    last = (rrq, server)
    tries = 0
    s.sendto(*last)
    while True:
        try:
            pkt, src = s.recvfrom(65536)
        except socket.timeout:
            tries += 1
            if tries > 6:
                return None, tid, "timeout waiting for block %d" % expect
            s.sendto(*last)
            continue
        if tid is None:
            tid = src
        elif src != tid:
            continue
        op = struct.unpack("!H", pkt[:2])[0]
        if op == 6:  # OACK
            opts = pkt[2:].split(b"\0")
            for k, v in zip(opts[::2], opts[1::2]):
                if k.lower() == b"blksize":
                    blksize = int(v)
            last = (struct.pack("!HH", 4, 0), tid)
            s.sendto(*last)
            tries = 0
        elif op == 3:
            block = struct.unpack("!H", pkt[2:4])[0]
            if block == expect & 0xFFFF:
                data += pkt[4:]
                expect += 1
                tries = 0
            last = (struct.pack("!HH", 4, block), tid)
            s.sendto(*last)
            if block == (expect - 1) & 0xFFFF and len(pkt) - 4 < blksize:
                return bytes(data), tid, None
        elif op == 5:
            return None, tid, "ERROR %r" % pkt[4:].rstrip(b"\0").decode(errors="replace")


def cmd_tftp(args):
    with open(args.expect, "rb") as f:
        want = f.read()
    results = [None] * args.clients

    def run(i):
        try:
            got, tid, err = fetch(args.host, args.file, args.timeout)
        except OSError as e:
            got, tid, err = None, None, "socket error: %s" % e
        if err is None and got != want:
            err = "content differs: %d bytes, want %d" % (len(got), len(want))
        results[i] = (tid[1] if tid else None, err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({
        "ok": sum(1 for _, e in results if e is None),
        "failed": [e for _, e in results if e is not None],
        "tids": [p for p, _ in results],
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dhcp")
    d.add_argument("--iface", required=True)
    d.add_argument("--count", type=int, default=1)
    d.add_argument("--gap", type=float, default=0.01)
    d.add_argument("--listen", type=float, default=2.0)
    t = sub.add_parser("tftp")
    t.add_argument("--host", required=True)
    t.add_argument("--file", required=True)
    t.add_argument("--expect", required=True)
    t.add_argument("--clients", type=int, default=40)
    t.add_argument("--timeout", type=float, default=1.0)
    args = p.parse_args()
    try:
        {"dhcp": cmd_dhcp, "tftp": cmd_tftp}[args.cmd](args)
    except OSError as e:
        print("local error: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
