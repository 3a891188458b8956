#!/usr/bin/env python3
"""A small TFTP client for crafting packets and misbehaving on purpose.

Used by tests/it/tftp_conformance.rs (run inside the test's network namespace) to check what
ironboot answers on the wire. Every subcommand prints one JSON object on stdout; a reply
packet is decoded as {"op": name, "from": "ip:port", ...}:
  DATA  {"block", "len"}   ACK {"block"}   OACK {"options": {name: value}}
  ERROR {"code", "message"}   other {"raw": hex}

Subcommands:
  send   one request (RRQ/WRQ built from arguments, or raw --hex bytes) to HOST:69; print
         the first reply. A transfer it started is aborted with ERROR 0 at once.
  fetch  a whole read transfer (options, windows, block-number rollover); writes the bytes
         exactly as received (netascii is NOT decoded) and says which ports DATA came from.
  stall  send an RRQ, take DATA 1 and never acknowledge it (with --prove: acknowledge
         DATA 1 once, never DATA 2); record every packet that arrives for --listen seconds
         (the server's retransmissions).
  hold   start several transfers at once from given source addresses, one socket each, and
         keep them open until all requests are answered (with --prove: each DATA 1 is
         acknowledged once, so the server counts the transfer, DATA 2 never); print each
         first reply; then abort the started ones with ERROR 0.
Exit status: 0 when the exchange could be carried out (whatever the server answered; the
caller judges), 2 on a local error (bad arguments, socket error).
"""

import argparse
import json
import socket
import struct
import sys
import time

OPS = {1: "RRQ", 2: "WRQ", 3: "DATA", 4: "ACK", 5: "ERROR", 6: "OACK"}


def build_request(opcode, name, mode, opts):
    body = name.encode() + b"\0" + mode.encode() + b"\0"
    for opt in opts:
        key, _, value = opt.partition("=")
        body += key.encode() + b"\0" + value.encode() + b"\0"
    return struct.pack("!H", opcode) + body


def decode(data, src):
    rep = {"from": "%s:%d" % src}
    if len(data) < 2:
        rep.update(op="runt", raw=data.hex())
        return rep
    (op,) = struct.unpack("!H", data[:2])
    rep["op"] = OPS.get(op, "op%d" % op)
    if op == 3 and len(data) >= 4:
        rep.update(block=struct.unpack("!H", data[2:4])[0], len=len(data) - 4)
    elif op == 4 and len(data) >= 4:
        rep["block"] = struct.unpack("!H", data[2:4])[0]
    elif op == 5 and len(data) >= 4:
        msg = data[4:]
        rep.update(code=struct.unpack("!H", data[2:4])[0],
                   message=msg.split(b"\0")[0].decode("utf-8", "replace"),
                   nul_terminated=msg.endswith(b"\0"))
    elif op == 6:
        parts = data[2:].split(b"\0")
        if parts and parts[-1] == b"":
            parts = parts[:-1]
        rep["options"] = {parts[i].decode(): parts[i + 1].decode()
                          for i in range(0, len(parts) - 1, 2)}
    else:
        rep["raw"] = data.hex()
    return rep


def ack(block):
    return struct.pack("!HH", 4, block & 0xFFFF)


def error(code, message):
    return struct.pack("!HH", 5, code) + message.encode() + b"\0"


def new_socket(src, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.settimeout(timeout)
    return s


def recv(s):
    try:
        data, src = s.recvfrom(70000)
    except socket.timeout:
        return None, None
    return data, src


def request_bytes(args):
    if args.hex is not None:
        return bytes.fromhex(args.hex)
    return build_request(2 if args.wrq else 1, args.file, args.mode, args.opt)


def cmd_send(args):
    s = new_socket(args.src, args.wait)
    s.sendto(request_bytes(args), (args.host, args.port))
    data, src = recv(s)
    if data is None:
        return {"reply": None}
    rep = decode(data, src)
    if rep.get("op") in ("DATA", "OACK"):
        s.sendto(error(0, "probe done"), src)
    return {"reply": rep}


def cmd_fetch(args):
    s = new_socket(args.src, args.timeout)
    s.sendto(request_bytes(args), (args.host, args.port))
    blksize, window = 512, 1
    out = bytearray()
    ports, oack, first = set(), None, None
    expected, in_window, last_acked = 1, 0, 0
    retries = 0
    peer = None
    while True:
        data, src = recv(s)
        if data is None:
            retries += 1
            if retries > 5:
                return {"ok": False, "why": "timeout", "bytes": len(out), "expected_block": expected}
            if peer is None:
                s.sendto(request_bytes(args), (args.host, args.port))
            else:
                s.sendto(ack(last_acked), peer)
            continue
        retries = 0
        if peer is None:
            peer = src
        elif src != peer:
            s.sendto(error(5, "unknown transfer ID"), src)
            continue
        rep = decode(data, src)
        if first is None:
            first = rep
        if rep["op"] == "ERROR":
            return {"ok": False, "why": "error", "first": first, "reply": rep, "bytes": len(out)}
        if rep["op"] == "OACK":
            if oack is None:
                oack = rep["options"]
                blksize = int(oack.get("blksize", 512))
                window = int(oack.get("windowsize", 1))
            s.sendto(ack(0), peer)
            continue
        if rep["op"] != "DATA":
            return {"ok": False, "why": "unexpected", "reply": rep}
        ports.add(src[1])
        if rep["block"] == expected & 0xFFFF:
            out += data[4:]
            in_window += 1
            last_acked = expected
            expected += 1
            last = rep["len"] < blksize
            if last or in_window >= window:
                s.sendto(ack(last_acked), peer)
                in_window = 0
            if last:
                break
        else:
            # Out of order or a retransmission: acknowledge what we have (RFC 7440).
            s.sendto(ack(last_acked), peer)
            in_window = 0
    with open(args.out, "wb") as f:
        f.write(out)
    return {"ok": True, "bytes": len(out), "blocks": expected - 1, "oack": oack,
            "first": first, "data_ports": sorted(ports)}


def cmd_stall(args):
    s = new_socket(args.src, 0.2)
    start = time.monotonic()
    s.sendto(request_bytes(args), (args.host, args.port))
    seen = []
    while time.monotonic() - start < args.listen:
        data, src = recv(s)
        if data is None:
            continue
        rep = decode(data, src)
        rep["t"] = round(time.monotonic() - start, 3)
        seen.append(rep)
        if args.prove and len(seen) == 1 and rep.get("op") == "DATA" and rep.get("block") == 1:
            s.sendto(ack(1), src)
    return {"packets": seen}


def cmd_hold(args):
    socks = []
    results = []
    for group in args.group:
        src, _, count = group.rpartition(":")
        for _ in range(int(count)):
            s = new_socket(src, args.wait)
            s.sendto(request_bytes(args), (args.host, args.port))
            data, peer = recv(s)
            rep = decode(data, peer) if data is not None else None
            results.append({"src": src, "reply": rep})
            if args.prove and rep is not None and rep.get("op") == "DATA" and rep.get("block") == 1:
                s.sendto(ack(1), peer)
                recv(s)
            socks.append((s, peer, rep))
    for s, peer, rep in socks:
        if rep is not None and rep.get("op") in ("DATA", "OACK"):
            s.sendto(error(0, "probe done"), peer)
    return {"results": results}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("send", "fetch", "stall", "hold"):
        sp = sub.add_parser(name)
        sp.add_argument("--host", default="127.0.0.1")
        sp.add_argument("--port", type=int, default=69)
        sp.add_argument("--src", default="0.0.0.0", help="local address to send from")
        sp.add_argument("--file", default="snp.efi")
        sp.add_argument("--mode", default="octet")
        sp.add_argument("--opt", action="append", default=[], help="option as name=value")
        sp.add_argument("--wrq", action="store_true", help="a write request instead")
        sp.add_argument("--hex", help="send these raw bytes instead of a request")
        sp.add_argument("--wait", type=float, default=3.0, help="seconds to wait for a reply")
    sub.choices["fetch"].add_argument("--out", required=True)
    sub.choices["fetch"].add_argument("--timeout", type=float, default=1.0)
    sub.choices["stall"].add_argument("--listen", type=float, default=9.0)
    for name in ("stall", "hold"):
        sub.choices[name].add_argument("--prove", action="store_true",
                                       help="acknowledge DATA 1 once (the server then counts the transfer)")
    sub.choices["hold"].add_argument("--group", action="append", required=True,
                                     help="SRC_IP:COUNT requests from that address")
    args = p.parse_args()
    try:
        result = {"send": cmd_send, "fetch": cmd_fetch, "stall": cmd_stall, "hold": cmd_hold}[args.cmd](args)
    except OSError as e:
        print(json.dumps({"local_error": str(e)}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
