#!/usr/bin/env python3
"""Table of benches/storm_image_compare.sh.

    storm_image_report.py RESULTS.jsonl > results.md

One JSON object per storm run (the storm's report plus what the script measured). For a
shaped run (tbf at a rate such as `5gbit`) the wire-time bound is the bytes the tbf on the
server veth sent (GSO packets counted as the frames they become, as tbf charges them)
x 8 / rate. ironboot's bound is max(its wire time, nginx's image stage time in
the same link and repeat); nginx's is its own wire time. Targets: ironboot's image stage
within 1.1x of its bound, no failed boot, ironboot's peak RSS under 128 MiB. Standard
library only.
"""

import json
import re
import statistics
import sys
from collections import defaultdict

RATIO_TARGET = 1.1
RSS_TARGET_MIB = 128
UNITS = {"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}


def rate_bps(shaping):
    """tc's rate syntax (`5gbit`, `800mbit`) in bits per second; None for `none`."""
    m = re.fullmatch(r"([0-9.]+)([a-z]*)", shaping)
    if shaping == "none" or not m or m.group(2) not in UNITS:
        return None
    return float(m.group(1)) * UNITS[m.group(2)]


def failures(r):
    if not r.get("failed"):
        return "0"
    reasons = defaultdict(int)
    for stage, st in r.get("stages", {}).items():
        for k, v in st.get("failures", {}).items():
            reasons[f"{stage} {k}"] += v
    return f"{r['failed']} ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))})"


def wire_cell(r):
    if r["tbf_bytes"]:
        return f"{r['tbf_bytes'] / 1e9:.2f} ({r['tbf_drops']})"
    return f"{r['server_tx_bytes'] / 1e9:.2f} (veth)"


def fmt(v, f="{:.2f}"):
    return "-" if v is None else f.format(v)


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    by_key = {(r["case"], r["shaping"], r["repeat"]): r for r in rows}
    print("| case | link | run | booted | failed | image GB | image stage s | goodput MB/s "
          "| wire GB (tbf drops) | wire time s | bound s | image time / bound | ironboot CPU s "
          "| nginx CPU s | storm CPU s | machine CPU s | ironboot peak RSS MiB |")
    print("|---|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    verdicts = []
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | {r['shaping']} | {r['repeat']} | storm failed: {r['error']} |")
            continue
        rate = rate_bps(r["shaping"])
        wire = r["tbf_bytes"] * 8 / rate if rate else None
        bound = wire
        if r["case"] == "ironboot":
            other = by_key.get(("nginx", r["shaping"], r["repeat"]))
            candidates = [b for b in (wire, other and "error" not in other and other["image_secs"]) if b]
            bound = max(candidates) if candidates else None
        ratio = r["image_secs"] / bound if bound else None
        rss = r["ironboot_hwm_kib"] / 1024
        ratio_cell = fmt(ratio)
        if r["case"] == "ironboot" and ratio is not None:
            ratio_cell = f"**{ratio_cell}**"
        print(f"| {r['case']} | {r['shaping']} | {r['repeat']} | {r['booted']} | {failures(r)} "
              f"| {r['image_bytes'] / 1e9:.2f} | {r['image_secs']:.2f} | {r['image_mb_s']:.0f} "
              f"| {wire_cell(r)} | {fmt(wire)} | {fmt(bound)} | {ratio_cell} "
              f"| {r['ironboot_cpu_secs']:.2f} | {r['nginx_cpu_secs']:.2f} "
              f"| {r['generator_cpu_secs']:.2f} | {r['machine_cpu_secs']:.2f} | {rss:.1f} |")
        if r["case"] == "ironboot":
            ok = [
                ratio is not None and ratio <= RATIO_TARGET,
                r["failed"] == 0,
                rss < RSS_TARGET_MIB,
            ]
            verdicts.append(
                f"- ironboot, {r['shaping']}, run {r['repeat']}: image time / bound "
                f"{fmt(ratio)} (target <= {RATIO_TARGET}: {'met' if ok[0] else 'NOT met'}), "
                f"{r['failed']} failed ({'met' if ok[1] else 'NOT met'}), peak RSS {rss:.1f} MiB "
                f"(target < {RSS_TARGET_MIB}: {'met' if ok[2] else 'NOT met'})"
            )
    print()
    print("Wire: the bytes the tbf on the server veth sent (every frame: PXE, scripts, images;")
    print("GSO packets as the frames they become) and the packets it dropped; unshaped, the")
    print("veth's tx_bytes (one set of headers per GSO packet). Wire time: tbf bytes x 8 / rate.")
    print("ironboot's bound: max(its wire time, nginx's image stage time on the same link and")
    print("repeat); nginx's: its wire time. Unshaped runs have no wire bound.")
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
