#!/usr/bin/env python3
"""Fails if any log line under a directory carries a secret the tests recorded.

usage: tests/check-log-secrets.py DIR

DIR is the suite's log directory (IRONBOOT_TEST_LOG_DIR, set by tests/run-all.sh): every
ironboot process the tests start writes its debug log there as *.log, and the tests and
Go harnesses append each secret they make up (the Omni service-account key, the BMC
passwords ironboot generates, join tokens, ...) to DIR/secrets.jsonl, one JSON object
{"what": ..., "secret": ...} a line.

Each secret is looked for in the forms a log line could carry it: as it is; each line of
it (an armored key's body lines, also when the key was logged with escaped newlines);
the armored OpenPGP key inside a service-account key (base64 of a JSON document with a
"pgp_key"); and the base64 (standard and URL-safe) of each of these at all three byte
alignments, so that a secret inside a longer encoded value (an HTTP Basic credential) is
found too. Only forms of at least MIN_LEN characters are looked for, so that a short form
cannot match by chance; a recorded secret shorter than that is refused.

Exit status: 0 when nothing was found; 1 naming each file and line that carries a secret
(the secret itself is never printed, only what it is); 2 when the check cannot be
trusted: no log, no secret recorded, a malformed record, or no log written at debug level.
"""

import base64
import binascii
import json
import os
import subprocess
import sys
import tempfile

SECRETS_FILE = "secrets.jsonl"
MIN_LEN = 8
# Interior of a base64 form: shorter ones are too likely to occur by chance.
MIN_B64_LEN = 12


def b64_interiors(data: bytes):
    """The base64 text of `data` wherever it sits in a longer value: for each of the 3
    byte offsets, the characters that depend on `data` alone."""
    out = set()
    for offset in range(3):
        enc = base64.b64encode(b"\0" * offset + data).decode()
        start = 4 if offset else 0
        # Characters of the last, incomplete group depend on the bytes that follow.
        full = (offset + len(data)) // 3 * 4
        interior = enc[start:full]
        if len(interior) >= MIN_B64_LEN:
            out.add(interior)
            out.add(interior.replace("+", "-").replace("/", "_"))
    return out


def service_account_key_parts(secret: str):
    """The armored OpenPGP key and its body lines, if `secret` is an Omni service-account
    key (base64 of JSON with "pgp_key")."""
    try:
        doc = json.loads(base64.b64decode(secret.strip(), validate=True))
    except (binascii.Error, ValueError):
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("pgp_key"), str):
        return []
    armored = doc["pgp_key"]
    return [armored] + armored.splitlines()


def forms(secret: str):
    plain = {secret}
    plain.update(service_account_key_parts(secret))
    for text in list(plain):
        for line in text.splitlines():
            line = line.strip()
            # Armor headers and footers are not secret; body lines are.
            if line.startswith(("-----", "Comment:", "Version:")):
                continue
            plain.add(line)
        # Logged through Debug formatting: newlines escaped.
        if "\n" in text:
            plain.add(text.replace("\n", "\\n"))
    found = {p for p in plain if len(p) >= MIN_LEN and "\n" not in p}
    for p in list(found):
        found.update(b64_interiors(p.encode()))
    return found


def read_secrets(path):
    secrets = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                what, secret = rec["what"], rec["secret"]
            except (ValueError, KeyError, TypeError) as e:
                sys.exit(f"check-log-secrets: {path}:{n}: not a secret record ({e})")
            if not isinstance(secret, str) or len(secret) < MIN_LEN:
                print(
                    f"check-log-secrets: {path}:{n}: the secret '{what}' is shorter than "
                    f"{MIN_LEN} characters: it cannot be looked for without matching by "
                    "chance; make the test's secret longer",
                    file=sys.stderr,
                )
                sys.exit(2)
            secrets.append((what, secret))
    return secrets


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    if not os.path.isdir(root):
        print(f"check-log-secrets: {root} is not a directory: nothing was checked", file=sys.stderr)
        return 2
    logs = sorted(
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".log")
    )
    secrets_path = os.path.join(root, SECRETS_FILE)
    secrets = read_secrets(secrets_path) if os.path.exists(secrets_path) else []
    if not logs:
        print(f"check-log-secrets: no *.log under {root}: nothing was checked", file=sys.stderr)
        return 2
    if not secrets:
        print(
            f"check-log-secrets: no secret recorded in {secrets_path}: nothing was looked for "
            "(did the tests that make up secrets run?)",
            file=sys.stderr,
        )
        return 2

    needles = {}  # form -> what
    for what, secret in secrets:
        for form in forms(secret):
            needles.setdefault(form, what)
    kinds = sorted({what for what, _ in secrets})

    debug_logs = 0
    total_bytes = 0
    for path in logs:
        total_bytes += os.path.getsize(path)
        with open(path, "rb") as f:
            if any(b" DEBUG " in line for line in f):
                debug_logs += 1
    if debug_logs == 0:
        print(
            f"check-log-secrets: none of the {len(logs)} logs under {root} has a DEBUG line: "
            "ironboot did not run at debug level, the check would prove nothing",
            file=sys.stderr,
        )
        return 2

    # grep -F matches all the fixed strings in one pass (Aho-Corasick); the file of
    # needles is private and removed at once.
    with tempfile.NamedTemporaryFile("w", prefix="needles-", delete=False) as f:
        os.chmod(f.name, 0o600)
        f.write("\n".join(sorted(needles)) + "\n")
        needles_file = f.name
    try:
        grep = subprocess.run(
            ["grep", "-F", "-n", "-H", "-a", "-f", needles_file, "--", *logs],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    finally:
        os.unlink(needles_file)
    if grep.returncode not in (0, 1):
        print(f"check-log-secrets: grep failed: {grep.stderr.decode(errors='replace')}", file=sys.stderr)
        return 2

    findings = []
    for raw in grep.stdout.splitlines():
        line = raw.decode("utf-8", errors="replace")
        # path:line:content (paths are ours: no colon in them)
        path, lineno, content = line.split(":", 2)
        whats = sorted({what for form, what in needles.items() if form in content})
        for form in needles:
            content = content.replace(form, "<SECRET>")
        findings.append((path, lineno, whats, content))

    summary = (
        f"{len(logs)} logs ({debug_logs} at debug level, {total_bytes} bytes) for "
        f"{len(secrets)} secrets ({', '.join(kinds)}) in {len(needles)} forms"
    )
    if findings:
        print(f"check-log-secrets: FAILED: secrets in {len(findings)} log lines ({summary}):", file=sys.stderr)
        for path, lineno, whats, content in findings[:50]:
            print(f"  {path}:{lineno}: {', '.join(whats)}: {content[:300]}", file=sys.stderr)
        if len(findings) > 50:
            print(f"  ... and {len(findings) - 50} more lines", file=sys.stderr)
        return 1
    print(f"check-log-secrets: no secret in any log line: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
