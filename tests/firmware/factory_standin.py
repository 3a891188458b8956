#!/usr/bin/env python3
"""A tiny Talos Image Factory stand-in for the real-firmware Omni scenario (omni.sh).

It speaks the two requests ironboot's agent-mode boot involves:

  POST /schematics                          -> 201 {"id": sha256 of the body}
  GET  /pxe/<id>/<version>/metal-<arch>     -> an iPXE script printing the marker lines
                                                 IBFACTORY-AGENT v=<version> a=<arch>
                                                 IBFACTORY-ID <id>
                                               then fetching its kernel (below) and the
                                               schematic's talos.config= URL as the booted
                                               image would, and printing
                                                 IBFACTORY-KERNEL ok|failed
                                                 IBFACTORY-CONFIG ok|failed|none
                                               (404 for an ID never posted)
  GET  /image/<id>/<version>/kernel-<arch>  -> 3 MiB of a byte pattern (the "kernel")

The real factory's script puts the schematic's kernel arguments on iPXE's `kernel` line,
where iPXE expands `${uuid}`; the stand-in's `imgfetch` line gets the same expansion, so
the machine asks for the configuration under its own SMBIOS UUID. The body is read as
YAML (python3-yaml).

The real factory also names a schematic by the SHA-256 of its (canonical) YAML. Every
request is appended, as one JSON object a line, to the log file given on the command
line: method, path, client address, Content-Type and (for POST) the body.

usage: factory_standin.py ADDRESS PORT LOGFILE
"""

import hashlib
import http.server
import json
import re
import sys
import threading

import yaml

PXE_PATH = re.compile(r"^/pxe/([0-9a-f]{64})/([A-Za-z0-9.+-]+)/metal-([a-z0-9-]+)$")
IMAGE_PATH = re.compile(r"^/image/([0-9a-f]{64})/([A-Za-z0-9.+-]+)/kernel-([a-z0-9-]+)$")
# The "kernel" the stand-in serves: 3 MiB, a byte pattern the test can check by its size.
KERNEL = bytes(i % 251 for i in range(3 << 20))


class Factory(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, log_path):
        super().__init__(addr, Handler)
        self.log_path = log_path
        self.lock = threading.Lock()
        self.schematics = {}  # id -> the talos.config= URL of its kernel arguments, or None

    def record(self, entry):
        with self.lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "ibfw-factory-standin/1"

    def reply(self, status, body, ctype):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def entry(self, body=None):
        e = {
            "method": self.command,
            "path": self.path,
            "client": self.client_address[0],
            "content_type": self.headers.get("Content-Type"),
        }
        if body is not None:
            e["body"] = body.decode("utf-8", "replace")
        return e

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.record(self.entry(body))
        if self.path != "/schematics":
            self.reply(404, "not found\n", "text/plain")
            return
        try:
            cust = (yaml.safe_load(body) or {}).get("customization") or {}
            args = cust.get("extraKernelArgs") or []
        except (yaml.YAMLError, AttributeError) as e:
            self.reply(400, "invalid schematic: %s\n" % e, "text/plain")
            return
        config = next((a.split("=", 1)[1] for a in args if a.startswith("talos.config=")), None)
        sid = hashlib.sha256(body).hexdigest()
        with self.server.lock:
            self.server.schematics[sid] = config
        self.reply(201, json.dumps({"id": sid}), "application/json")

    def do_GET(self):  # noqa: N802
        self.server.record(self.entry())
        img = IMAGE_PATH.match(self.path)
        if img is not None:
            with self.server.lock:
                known = img.group(1) in self.server.schematics
            if not known:
                self.reply(404, "unknown schematic\n", "text/plain")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(KERNEL)))
            self.end_headers()
            self.wfile.write(KERNEL)
            return
        m = PXE_PATH.match(self.path)
        with self.server.lock:
            known = m is not None and m.group(1) in self.server.schematics
            config = self.server.schematics.get(m.group(1)) if known else None
        if not known:
            self.reply(404, "unknown schematic or path\n", "text/plain")
            return
        sid, version, arch = m.groups()
        # Short lines: SeaBIOS's serial console wraps at 80 columns.
        script = "#!ipxe\necho IBFACTORY-AGENT v=%s a=%s\necho IBFACTORY-ID %s\n" % (
            version,
            arch,
            sid,
        )
        # As the real factory's script names its kernel: on its own public URL. ironboot's
        # proxy rewrites it to itself (plain HTTP, cached); the VM downloads it from there.
        host = self.headers.get("Host") or "%s:%d" % self.server.server_address[:2]
        script += (
            "imgfetch --name kernel http://%s/image/%s/%s/kernel-%s && "
            "echo IBFACTORY-KERNEL ok || echo IBFACTORY-KERNEL failed\n" % (host, sid, version, arch)
        )
        if config is None:
            script += "echo IBFACTORY-CONFIG none\n"
        else:
            script += (
                "imgfetch --name talosconfig %s && echo IBFACTORY-CONFIG ok || "
                "echo IBFACTORY-CONFIG failed\n" % config
            )
        self.reply(200, script, "text/plain")

    def log_message(self, fmt, *args):
        sys.stderr.write("factory: %s %s\n" % (self.client_address[0], fmt % args))
        sys.stderr.flush()


def main():
    addr, port, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    server = Factory((addr, port), log_path)
    print("listening %s:%d" % (addr, port), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
