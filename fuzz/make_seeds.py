#!/usr/bin/env python3
"""Write the seed corpus of the dhcp_proxy fuzz target into corpus/dhcp_proxy/.

Each file is one selector byte (receive context; bit layout in
net/src/proxy/fuzz.rs) followed by a DHCP payload: the golden firmware packets of
net/tests/data/ in the context they were captured in, plus hand-made edge cases.
Run from fuzz/: `python3 make_seeds.py`. Files are named seed-*, so they are easy to
tell from what the fuzzer adds (cmin renames everything to hashes, which is fine).
"""

import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE.parent / "net" / "tests" / "data"
OUT = HERE / "corpus" / "dhcp_proxy"

# Selector bits: 0-1 port (67, 4011, 68, 50042), 2-3 source (0.0.0.0:68,
# client:68, client:4011, relay:67), 4 other interface, 5 IA32 file configured,
# 6-7 output buffer (2048, 1500, 576, 300).
P67, P4011, P68 = 0, 1, 2
SRC_NONE, SRC_CLIENT68, SRC_CLIENT4011, SRC_RELAY = 0, 4, 8, 12
OTHER_IF, IA32, OUT576, OUT300 = 0x10, 0x20, 0x80, 0xC0

COOKIE = bytes([99, 130, 83, 99])
MAC = bytes.fromhex("525400123456")


def header(op=1, hlen=6, xid=0x1234ABCD, flags=0, ciaddr=b"\0" * 4, giaddr=b"\0" * 4,
           sname=b"", file=b"", cookie=COOKIE):
    h = struct.pack("!BBBBIHH", op, 1, hlen, 0, xid, 0, flags)
    h += ciaddr + b"\0" * 8 + giaddr + MAC.ljust(16, b"\0")
    return h + sname.ljust(64, b"\0")[:64] + file.ljust(128, b"\0")[:128] + cookie


def opt(code, data):
    return bytes([code, len(data)]) + data


def dhcp(msg_type, *opts, end=True, **hdr):
    body = opt(53, bytes([msg_type])) if msg_type is not None else b""
    return header(**hdr) + body + b"".join(opts) + (b"\xff" if end else b"")


PXE = opt(60, b"PXEClient:Arch:00007:UNDI:003000")
ARCH_EFI = opt(93, b"\x00\x07")
UUID = opt(97, b"\x00" + bytes(range(16)))


def golden(name):
    return (DATA / f"{name}.bin").read_bytes()


SEEDS = {
    # Golden packets, in the context they were captured in.
    "ipxe-rom-discover": (P67 | SRC_NONE, golden("ipxe-rom-bios-discover")),
    "edk2-discover": (P67 | SRC_NONE, golden("edk2-x64-discover")),
    "edk2-discover-relay-source": (P67 | SRC_RELAY, golden("edk2-x64-discover")),
    "edk2-discover-other-if": (P67 | OTHER_IF, golden("edk2-x64-discover")),
    "edk2-discover-out576": (P67 | OUT576, golden("edk2-x64-discover")),
    "edk2-discover-out300": (P67 | OUT300, golden("edk2-x64-discover")),
    "edk2-discover-port68": (P68, golden("edk2-x64-discover")),
    "snponly-discover": (P67 | SRC_NONE, golden("snponly-efi-discover")),
    "ipxe-rom-request-4011": (P4011 | SRC_CLIENT68, golden("ipxe-rom-bios-proxy-request-4011")),
    "edk2-request-4011": (P4011 | SRC_CLIENT4011, golden("edk2-x64-proxy-request-4011")),
    "snponly-request-4011": (P4011 | SRC_CLIENT68, golden("snponly-efi-proxy-request-4011")),
    "snponly-request-4011-other-if": (
        P4011 | SRC_CLIENT68 | OTHER_IF, golden("snponly-efi-proxy-request-4011")),
    "ipxe-rom-request-to-site": (P67 | SRC_NONE, golden("ipxe-rom-bios-request-to-site")),
    "site-offer": (P67, golden("site-dhcp-offer")),
    "dnsmasq-offer": (P67, golden("dnsmasq-proxy-offer-to-ipxe-rom")),
    "dnsmasq-ack-ipxe": (P4011 | SRC_CLIENT68, golden("dnsmasq-proxy-ack-to-ipxe-rom")),
    "dnsmasq-ack-edk2": (P4011 | SRC_CLIENT4011, golden("dnsmasq-proxy-ack-to-edk2")),
    # Malformed messages: every reason to refuse.
    "empty": (P67, b""),
    "too-short": (P67, header()[:-1]),
    "too-long": (P67, dhcp(1, PXE).ljust(1473, b"\0")),  # MAX_LEN + 1
    "bad-cookie": (P67, dhcp(1, PXE, cookie=b"\x63\x82\x53\x62")),
    "bad-op": (P67, dhcp(1, PXE, op=3)),
    "hlen-17": (P67, dhcp(1, PXE, hlen=17)),
    "truncated-option": (P67, header() + opt(53, b"\x01") + b"\x3c\xc8PXEClient"),
    "option-length-only": (P67, header() + b"\x35"),
    "bad-53-length": (P67, dhcp(None, opt(53, b"\x01\x01"), PXE)),
    "bad-54-length": (P4011 | SRC_CLIENT68, dhcp(3, opt(54, b"\x0a\x62\x00"), PXE)),
    "odd-93": (P67, dhcp(1, PXE, opt(93, b"\x00\x07\x00"))),
    "empty-93": (P67, dhcp(1, PXE, opt(93, b""))),
    "bad-175": (P67, dhcp(1, PXE, opt(175, b"\x01\x05ab"))),
    # Well-formed edge cases.
    "minimal-discover": (P67, dhcp(1, PXE, ARCH_EFI)),
    "no-end": (P67, dhcp(1, PXE, ARCH_EFI, end=False)),
    "pad-and-trailer": (P67, dhcp(1, b"\0\0", PXE, b"\0") + b"\0\0junk\x35"),
    "full-sname-file": (P67, dhcp(1, PXE, sname=b"s" * 64, file=b"f" * 128)),
    "hlen-0": (P67, dhcp(1, PXE, hlen=0)),
    "hlen-16": (P67, dhcp(1, PXE, hlen=16)),
    "bootp": (P67, dhcp(None, PXE)),
    "not-pxe": (P67, dhcp(1, opt(60, b"MSFT 5.0"))),
    "unknown-arch": (P67, dhcp(1, PXE, opt(93, b"\x00\x02"))),
    "arch-list": (P67, dhcp(1, PXE, opt(93, b"\x00\x02\x00\x0b\x00\x07"))),
    "vendor-class-arch-only": (P67, dhcp(1, opt(60, b"PXEClient:Arch:00011:UNDI:003000"))),
    "vendor-class-bad-arch": (P67, dhcp(1, opt(60, b"PXEClient:Arch:99999"))),
    "ia32-unconfigured": (P67, dhcp(1, PXE, opt(93, b"\x00\x06"))),
    "ia32-configured": (P67 | IA32, dhcp(1, PXE, opt(93, b"\x00\x06"))),
    "ia32-http-configured": (P67 | IA32, dhcp(1, opt(60, b"HTTPClient"), opt(93, b"\x00\x0f"))),
    "http-x64": (P67, dhcp(1, opt(60, b"HTTPClient:Arch:00016"), opt(93, b"\x00\x10"))),
    "http-arm64-uboot": (P67, dhcp(1, opt(60, b"HTTPClient"), opt(93, b"\x00\x18"))),
    "user-class-rfc3004": (P67, dhcp(1, PXE, ARCH_EFI, opt(77, b"\x04iPXE\x03foo"))),
    "user-class-bad-rfc3004": (P67, dhcp(1, PXE, ARCH_EFI, opt(77, b"\x09iPXE"))),
    "ipxe-175": (P67, dhcp(1, PXE, ARCH_EFI, opt(175, opt(177, b"\x01\x02")))),
    "duplicate-options": (P67, dhcp(1, opt(53, b"\x03"), PXE, opt(60, b"MSFT"), ARCH_EFI)),
    "relayed": (P67 | SRC_RELAY, dhcp(1, PXE, ARCH_EFI, opt(82, b"\x01\x04eth0"),
                                      giaddr=bytes([10, 98, 1, 1]))),
    "big-echoes": (P67, dhcp(1, PXE, ARCH_EFI, opt(61, b"i" * 255), opt(97, b"u" * 255),
                             opt(82, b"r" * 255))),
    "big-echoes-out576": (P67 | OUT576, dhcp(1, PXE, ARCH_EFI, opt(61, b"i" * 255),
                                             opt(97, b"u" * 255), opt(82, b"r" * 255))),
    "inform-4011": (P4011 | SRC_CLIENT4011, dhcp(8, PXE, ARCH_EFI, UUID,
                                                 ciaddr=bytes([10, 98, 0, 127]))),
    "request-4011-other-server": (P4011 | SRC_CLIENT68, dhcp(3, PXE, ARCH_EFI,
                                                             opt(54, bytes([10, 98, 0, 2])))),
    "request-4011-boot-item": (P4011 | SRC_CLIENT68, dhcp(
        3, PXE, opt(43, opt(71, b"\x80\x00\x00\x00") + b"\xff"), UUID)),
    "request-4011-bad-43": (P4011 | SRC_CLIENT68, dhcp(3, PXE, opt(43, b"\x47\x09"))),
    "request-4011-unspecified-source": (P4011 | SRC_NONE, dhcp(3, PXE, ARCH_EFI)),
    "discover-on-4011": (P4011 | SRC_CLIENT68, dhcp(1, PXE, ARCH_EFI)),
    "decline-on-67": (P67, dhcp(4, PXE, ARCH_EFI)),
    "broadcast-flag": (P67, dhcp(1, PXE, ARCH_EFI, flags=0x8000)),
    "all-flags": (P67, dhcp(1, PXE, ARCH_EFI, flags=0xFFFF)),
}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (selector, payload) in SEEDS.items():
        (OUT / f"seed-{name}").write_bytes(bytes([selector]) + payload)
    print(f"wrote {len(SEEDS)} seeds to {OUT}")


if __name__ == "__main__":
    main()
