#!/usr/bin/env python3
"""A hostile host on a PXE network, for benches/proxy_dhcp_hostile.sh.

Sends ProxyDHCP requests built to make a server reflect traffic: DISCOVERs whose giaddr
names broadcast, multicast, loopback, reserved and "this network" addresses, the served
subnet's network and broadcast addresses, and this host itself as a "relay"; 4011
REQUESTs from ports that are not PXE client ports (a victim's DNS or NTP port). Every
request is stuffed with the options a server might echo (61, 82 and an over-long 97,
255 bytes each) and an unknown one.

Victim sockets on this host (0.0.0.0:67, and the source ports used) count what the
server sends them. Prints one JSON object: requests and bytes sent, datagrams and bytes received by
the victims, by kind.

usage: proxy_dhcp_hostile.py SERVER_IP LOCAL_IP SUBNET_PREFIX COUNT RATE
"""

import json
import select
import socket
import struct
import sys
import time

SERVER, LOCAL, PREFIX, COUNT, RATE = sys.argv[1:6]
COUNT, RATE = int(COUNT), float(RATE)


def subnet_edges(addr, prefix):
    a = struct.unpack("!I", socket.inet_aton(addr))[0]
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return socket.inet_ntoa(struct.pack("!I", a & mask)), socket.inet_ntoa(
        struct.pack("!I", (a & mask) | (~mask & 0xFFFFFFFF))
    )


NETWORK, BROADCAST = subnet_edges(SERVER, int(PREFIX))
GIADDRS = [
    "255.255.255.255",
    "224.0.0.1",
    "239.255.255.250",
    "127.0.0.1",
    "0.1.2.3",
    "240.0.0.1",
    "169.254.1.1",
    BROADCAST,
    NETWORK,
    LOCAL,  # this host as a "relay": answered unless --dhcp-relay-allow leaves it out
]
VICTIM_PORTS = [53, 123]


def option(code, data):
    return bytes([code, len(data)]) + data


def request(msg_type, giaddr, ciaddr, xid):
    mac = bytes([0x02, 0x66, (xid >> 16) & 0xFF, (xid >> 8) & 0xFF, xid & 0xFF, 0x01])
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s4s",
        1, 1, 6, 0, xid, 0, 0,
        socket.inet_aton(ciaddr), bytes(4), bytes(4), socket.inet_aton(giaddr),
        mac, bytes(64), bytes(128), bytes([99, 130, 83, 99]),
    )
    opts = (
        option(53, bytes([msg_type]))
        + option(60, b"PXEClient:Arch:00007:UNDI:003016")
        + option(93, b"\x00\x07")
        + option(61, b"\xa5" * 255)
        + option(82, b"\xa5" * 255)
        + option(97, b"\xa5" * 255)
        + option(250, b"\xa5" * 255)
        + b"\xff"
    )
    return header + opts


def main():
    victim67 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim67.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    victim67.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    victim67.bind(("0.0.0.0", 67))
    victims = {67: victim67}
    for port in VICTIM_PORTS:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((LOCAL, port))
        victims[port] = s
    sent = {"discover": 0, "request_4011": 0}
    sent_bytes = 0
    received = {p: [0, 0] for p in victims}
    start = time.monotonic()

    def drain():
        while True:
            ready, _, _ = select.select(list(victims.values()), [], [], 0)
            if not ready:
                return
            for s in ready:
                data, (src, _) = s.recvfrom(65536)
                # Only the server's datagrams: port 67 also hears this host's own
                # broadcasts (the booting rack's DISCOVERs).
                if src != SERVER:
                    continue
                port = s.getsockname()[1]
                received[port][0] += 1
                received[port][1] += len(data)

    for i in range(COUNT):
        xid = 0x7A000000 + i
        if i % 3 == 2:
            port = VICTIM_PORTS[(i // 3) % len(VICTIM_PORTS)]
            pkt = request(3, "0.0.0.0", LOCAL, xid)
            victims[port].sendto(pkt, (SERVER, 4011))
            sent["request_4011"] += 1
        else:
            pkt = request(1, GIADDRS[i % len(GIADDRS)], "0.0.0.0", xid)
            victims[VICTIM_PORTS[0]].sendto(pkt, (SERVER, 67))
            sent["discover"] += 1
        sent_bytes += len(pkt)
        # Open loop at RATE requests per second.
        ahead = start + (i + 1) / RATE - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        if i % 64 == 0:
            drain()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        drain()
        time.sleep(0.05)
    print(json.dumps({
        "sent": sent,
        "sent_bytes": sent_bytes,
        "seconds": round(time.monotonic() - start, 2),
        "victim_received": {str(p): {"datagrams": n, "bytes": b} for p, (n, b) in received.items()},
    }))


main()
