#!/usr/bin/env python3
"""Independent RMCP+ test vectors for bmc/src/ipmi/crypto.rs (run once, paste the output).

Computes, with Python's hmac/hashlib and the openssl command line (not RustCrypto),
the values the Rust unit tests compare against. The formulas are those of the IPMI v2.0
specification, sections 13.31-13.32 (RAKP-HMAC-SHA1 / RAKP-HMAC-SHA256), 13.28.4
(integrity AuthCode) and 13.29 (AES-CBC-128 payload):

  K_UID      = password zero-padded to 20 bytes
  RAKP2 code = HMAC_KUID(SID_M | SID_C | R_M | R_C | GUID_C | ROLE_M | ULEN | UNAME)
  RAKP3 code = HMAC_KUID(R_C | SID_M | ROLE_M | ULEN | UNAME)
  SIK        = HMAC_KUID(R_M | R_C | ROLE_M | ULEN | UNAME)       (no K_G set)
  K1, K2     = HMAC_SIK(20 x 0x01), HMAC_SIK(20 x 0x02)
  RAKP4 ICV  = HMAC_SIK(R_M | SID_C | GUID_C), first 12 (SHA1) / 16 (SHA256) bytes
  AuthCode   = HMAC_K1(auth type .. next header), first 12 / 16 bytes
  AES        = IV | AES-128-CBC_K2[0:16](data | 1,2,..,n | n)

The session inputs (R_M, R_C, GUID, session ids, user admin/password, role 0x14) are those
of a real ipmitool <-> ipmi_sim session on the test rig, so for suite 3 the same numbers
also appear in ipmitool's own -vvv output (see the comments in crypto.rs).

usage: python3 bmc/tests/data/ipmi/rmcp_vectors.py
"""

import hashlib
import hmac
import struct
import subprocess

RM = bytes.fromhex("37486f9c27c394d8af20243da8ae1026")
RC = bytes.fromhex("005cd84125af56596bc6c2c4c2c6b40d")
GUID = bytes.fromhex("a123456789abcdefa123456789abcdef")
SID_M = struct.pack("<I", 0xA0A2A3A4)
SID_C = struct.pack("<I", 0x00000002)
ROLE = bytes([0x14])
USER = b"admin"
KUID = b"password".ljust(20, b"\0")

# A signed region of an authenticated, encrypted IPMI packet: auth type 06, payload type
# c0, session a0a2a3a4, sequence 1, length 32, 32 payload bytes, 2 pad bytes ff ff,
# pad length 02, next header 07 (12 + 32 + 2 + 2 = 48, a multiple of 4).
SIGNED = (bytes([0x06, 0xC0]) + SID_M + struct.pack("<I", 1) + struct.pack("<H", 32)
          + bytes(range(32)) + b"\xff\xff\x02\x07")


def mac(h, key, *parts):
    return hmac.new(key, b"".join(parts), h).digest()


def suite(h, icv_len):
    ulen = bytes([len(USER)])
    rakp2 = mac(h, KUID, SID_M, SID_C, RM, RC, GUID, ROLE, ulen, USER)
    rakp3 = mac(h, KUID, RC, SID_M, ROLE, ulen, USER)
    sik = mac(h, KUID, RM, RC, ROLE, ulen, USER)
    k1 = mac(h, sik, b"\x01" * 20)
    k2 = mac(h, sik, b"\x02" * 20)
    rakp4 = mac(h, sik, RM, SID_C, GUID)[:icv_len]
    authcode = mac(h, k1, SIGNED)[:icv_len]
    return dict(RAKP2=rakp2, RAKP3=rakp3, SIK=sik, K1=k1, K2=k2, RAKP4=rakp4, AUTHCODE=authcode)


def aes_payload():
    key = bytes(range(16))
    iv = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    data = bytes.fromhex("2018c881043801b5ff")  # 9 bytes -> pad 1..6, pad length 6
    pad = (16 - (len(data) + 1) % 16) % 16
    plain = data + bytes(range(1, pad + 1)) + bytes([pad])
    out = subprocess.run(
        ["openssl", "enc", "-aes-128-cbc", "-nopad", "-K", key.hex(), "-iv", iv.hex()],
        input=plain, capture_output=True, check=True).stdout
    return iv + out


def main():
    print(f'const PY_SIGNED: &str = "{SIGNED.hex()}";')
    for name, (h, n) in {"SUITE3": (hashlib.sha1, 12), "SUITE17": (hashlib.sha256, 16)}.items():
        for key, value in suite(h, n).items():
            print(f'{name}_{key} = "{value.hex()}"')
    print(f'AES = "{aes_payload().hex()}"')


if __name__ == "__main__":
    main()
