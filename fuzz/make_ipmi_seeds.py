#!/usr/bin/env python3
"""Write the seed corpus of the ipmi_response fuzz target into corpus/ipmi_response/.

Each file is one selector byte (bits 0-1: path, bit 2: cipher suite 17; see
bmc/src/ipmi/fuzz.rs) followed by bytes "from a BMC": well-formed replies of every kind
the client parses, and hand-made malformed ones (truncations, bad checksums, bad
trailers, bad padding). Established-session packets are sealed with the fixed keys the
fuzz check uses (K1 = 0x11..., AES key = 0x22..., our session id 0x01020304), with
Python's hmac and the openssl command line, so the fuzzer starts past the integrity check.
Run from fuzz/: `python3 make_ipmi_seeds.py`. Files are named seed-*.
"""

import hashlib
import hmac
import pathlib
import struct
import subprocess

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "corpus" / "ipmi_response"

PRESESSION, SETUP, SESSION, SEALED = 0, 1, 2, 3
S17 = 0x04
RMCP = bytes([0x06, 0x00, 0xFF, 0x07])
CONSOLE_SID = 0x01020304
TAG = 0x42


def csum(b):
    return (-sum(b)) & 0xFF


def response(netfn, cmd, data, cc=0, seq=1):
    head = bytes([0x81, (netfn | 1) << 2])
    body = bytes([0x20, seq << 2, cmd, cc]) + data
    return head + bytes([csum(head)]) + body + bytes([csum(body)])


def v15(msg, authtype=0, pad=b""):
    auth = bytes(16) if authtype else b""
    return RMCP + bytes([authtype]) + struct.pack("<II", 0, 0) + auth + bytes([len(msg)]) + msg + pad


def v20(ptype, payload, sid=0, seq=0):
    return RMCP + bytes([0x06, ptype]) + struct.pack("<IIH", sid, seq, len(payload)) + payload


def aes_cbc(key, iv, plain):
    return subprocess.run(
        ["openssl", "enc", "-aes-128-cbc", "-nopad", "-K", key.hex(), "-iv", iv.hex()],
        input=plain, capture_output=True, check=True).stdout


def sealed(msg, suite17=False, seq=1, sid=CONSOLE_SID, corrupt=None):
    h, n = (hashlib.sha256, 16) if suite17 else (hashlib.sha1, 12)
    k1 = b"\x11" * (32 if suite17 else 20)
    iv = bytes(range(16))
    pad = (16 - (len(msg) + 1) % 16) % 16
    payload = iv + aes_cbc(b"\x22" * 16, iv, msg + bytes(range(1, pad + 1)) + bytes([pad]))
    body = bytes([0x06, 0xC0]) + struct.pack("<IIH", sid, seq, len(payload)) + payload
    ipad = (4 - (len(body) + 2) % 4) % 4
    body += b"\xff" * ipad + bytes([ipad, 0x07])
    code = hmac.new(k1, body, h).digest()[:n]
    out = bytearray(RMCP + body + code)
    if corrupt is not None:
        out[corrupt] ^= 0x01
    return bytes(out)


CHASSIS_STATUS = response(0x00, 0x01, bytes([0x01, 0x00, 0x40, 0x00]))
AUTH_CAPS = response(0x06, 0x38, bytes([0x01, 0x97, 0x04, 0x02, 0, 0, 0, 0]), seq=0)
SUITES = response(0x06, 0x54, bytes([0x01, 0xC0, 0x03, 0x01, 0x41, 0x81, 0xC0, 0x11, 0x03, 0x44, 0x81]))
SUITES_FULL = response(0x06, 0x54, bytes([0x01]) + bytes([0xC0, 1, 1, 0x40, 0xC0, 2, 1, 0x41, 0xC0, 3, 1, 0x41, 0x81, 0xC1, 0x30, 0x57]))
PRIV = response(0x06, 0x3B, bytes([0x04]))
CLOSE = response(0x06, 0x3C, b"")
CONTROL = response(0x00, 0x02, b"")
BOOT_UNSUPPORTED = response(0x00, 0x08, b"", cc=0x80)
INSUFFICIENT_PRIV = response(0x00, 0x02, b"", cc=0xD4)


def open_session_response(status=0, algs=(1, 1, 1)):
    p = bytes([TAG, status, 4, 0]) + struct.pack("<II", CONSOLE_SID, 0x0A0B0C0D)
    for i, a in enumerate(algs):
        p += bytes([i, 0, 0, 8, a, 0, 0, 0])
    return p


def rakp2(codelen=20):
    return bytes([TAG, 0, 0, 0]) + struct.pack("<I", CONSOLE_SID) + b"\x5a" * 16 + b"\xa5" * 16 + b"\x77" * codelen


def rakp4(icvlen=12, status=0):
    return bytes([TAG, status, 0, 0]) + struct.pack("<I", CONSOLE_SID) + b"\x66" * icvlen


SEEDS = {
    # pre-session datagrams
    "v15-auth-caps": (PRESESSION, v15(AUTH_CAPS)),
    "v15-auth-caps-legacy-pad": (PRESESSION, v15(AUTH_CAPS, pad=b"\x00")),
    "v15-auth-caps-md5-authcode": (PRESESSION, v15(AUTH_CAPS, authtype=2)),
    "v15-auth-caps-truncated": (PRESESSION, v15(AUTH_CAPS)[:-3]),
    "v15-length-too-long": (PRESESSION, v15(AUTH_CAPS)[:13] + b"\xff" + AUTH_CAPS),
    "v20-cipher-suites": (PRESESSION, v20(0x00, SUITES)),
    "v20-cipher-suites-full-chunk": (PRESESSION, v20(0x00, SUITES_FULL)),
    "v20-bad-header-checksum": (PRESESSION, v20(0x00, AUTH_CAPS[:2] + b"\x00" + AUTH_CAPS[3:])),
    "v20-bad-body-checksum": (PRESESSION, v20(0x00, AUTH_CAPS[:-1] + b"\x00")),
    "v20-oem-payload": (PRESESSION, v20(0x02, b"\x00" * 8)),
    "v20-authenticated-presession": (PRESESSION, v20(0x40, CHASSIS_STATUS) + b"\xff\x01\x07" + b"\x00" * 12),
    "not-rmcp": (PRESESSION, b"\x06\x00\xff\x06" + b"\x80" * 12),
    "empty": (PRESESSION, b""),
    # session setup payloads
    "open-session-suite3": (SETUP, open_session_response()),
    "open-session-suite17": (SETUP | S17, open_session_response(algs=(3, 4, 1))),
    "open-session-refused": (SETUP | S17, bytes([TAG, 0x11, 0, 0])),
    "open-session-wrong-algs": (SETUP | S17, open_session_response()),
    "open-session-truncated": (SETUP, open_session_response()[:20]),
    "rakp2-suite3": (SETUP, rakp2(20)),
    "rakp2-suite17": (SETUP | S17, rakp2(32)),
    "rakp2-unauthorized-name": (SETUP, bytes([TAG, 0x0D, 0, 0]) + struct.pack("<I", CONSOLE_SID)),
    "rakp4-suite3": (SETUP, rakp4(12)),
    "rakp4-suite17": (SETUP | S17, rakp4(16)),
    # established-session datagrams, sealed with the fuzz keys
    "session-chassis-status-suite3": (SESSION, sealed(CHASSIS_STATUS)),
    "session-chassis-status-suite17": (SESSION | S17, sealed(CHASSIS_STATUS, suite17=True)),
    "session-priv-suite3": (SESSION, sealed(PRIV)),
    "session-close-suite17": (SESSION | S17, sealed(CLOSE, suite17=True)),
    "session-wrong-sid": (SESSION, sealed(CONTROL, sid=5)),
    "session-bad-authcode": (SESSION, sealed(CONTROL, corrupt=-1)),
    "session-bad-ciphertext": (SESSION, sealed(CONTROL, corrupt=30)),
    "session-empty-message": (SESSION, sealed(b"")),
    # plaintext responses sealed and opened by the check itself
    "sealed-chassis-status": (SEALED, CHASSIS_STATUS),
    "sealed-suites-suite17": (SEALED | S17, SUITES_FULL),
    "sealed-boot-unsupported": (SEALED, BOOT_UNSUPPORTED),
    "sealed-insufficient-priv": (SEALED | S17, INSUFFICIENT_PRIV),
    "sealed-empty": (SEALED, b""),
    "sealed-15-bytes": (SEALED, bytes(range(15))),
    "sealed-16-bytes": (SEALED | S17, bytes(range(16))),
}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (selector, data) in SEEDS.items():
        (OUT / f"seed-{name}").write_bytes(bytes([selector]) + data)
    print(f"wrote {len(SEEDS)} seeds to {OUT}")


if __name__ == "__main__":
    main()
