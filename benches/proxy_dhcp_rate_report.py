#!/usr/bin/env python3
"""Rows and tables of benches/proxy_dhcp_rate.sh.

    proxy_dhcp_rate_report.py row OUTPUT SERVER GENERATOR RATE DURATION TICKS TCK DROPS BUSY
        one JSON line from a generator's output (perfdhcp's text or the storm's JSON)
    proxy_dhcp_rate_report.py table RESULTS.jsonl > results.md

Standard library only.
"""

import json
import re
import sys
from collections import defaultdict

# The loss bound for "offers/s".
MAX_LOSS_PCT = 1.0


def perfdhcp(text):
    """The DISCOVER-OFFER exchange's figures from perfdhcp's statistics."""
    section = text.split("Statistics for: DISCOVER-OFFER", 1)
    if len(section) < 2:
        raise ValueError("no DISCOVER-OFFER statistics in perfdhcp's output: " + text[-300:])
    body = section[1]

    def num(label):
        m = re.search(rf"^{label}:\s*([0-9.]+)", body, re.M)
        if not m:
            raise ValueError(f"perfdhcp printed no {label!r}")
        return float(m.group(1))

    sent, received = int(num("sent packets")), int(num("received packets"))
    return {
        "sent": sent,
        "offers": received,
        "loss_pct": 100.0 * (sent - received) / sent if sent else 100.0,
        "p50_ms": None,
        "p99_ms": None,
        "avg_ms": num("avg delay"),
        "max_ms": num("max delay"),
    }


def storm(text):
    """The storm's report: DISCOVERs sent = machines + retransmissions; the lost ones are
    those retransmitted and the last tries of machines that never got an OFFER."""
    r = json.loads(text)
    d = r["stages"]["discover"]
    retrans = r["discover_retransmissions"]
    sent = r["machines"] + retrans
    lost = retrans + d["failed"]
    return {
        "sent": sent,
        "offers": r["replies"]["offers"],
        "loss_pct": 100.0 * lost / sent if sent else 100.0,
        "p50_ms": d["latency"]["p50_ms"],
        "p99_ms": d["latency"]["p99_ms"],
        "avg_ms": None,
        "max_ms": d["latency"]["max_ms"],
        "generator_cpu_secs": r["generator_cpu_secs"],
        "wall_secs": r["wall_secs"],
    }


def row(args):
    path, server, gen, rate, duration, ticks, tck, drops, busy = args
    out = {"server": server, "generator": gen, "rate": int(rate), "duration": int(duration),
           "server_cpu_secs": int(ticks) / int(tck), "server_rcvbuf_drops": int(drops),
           "machine_cpu_secs": int(busy) / int(tck)}
    try:
        text = open(path).read()
        out.update(perfdhcp(text) if gen == "perfdhcp" else storm(text))
    except Exception as e:  # the generator failed: record it, go on
        out["error"] = str(e)[:300]
    print(json.dumps(out))


def fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def table(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    print("| server | generator | offered /s | DISCOVERs sent | OFFERs | loss % | answered /s "
          "| p50 ms | p99 ms | avg ms | max ms | server CPU s | server CPU s per 100k OFFERs "
          "| rcvbuf drops | other CPU s |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    best = defaultdict(int)
    for r in rows:
        if "error" in r:
            print(f"| {r['server']} | {r['generator']} | {r['rate']} | generator failed: {r['error']} |")
            continue
        answered = r["offers"] / r["duration"]
        per100k = r["server_cpu_secs"] / r["offers"] * 1e5 if r["offers"] else None
        other = max(0.0, r["machine_cpu_secs"] - r["server_cpu_secs"] - r.get("generator_cpu_secs", 0.0))
        print(f"| {r['server']} | {r['generator']} | {r['rate']} | {r['sent']} | {r['offers']} "
              f"| {r['loss_pct']:.2f} | {answered:.0f} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} "
              f"| {fmt(r['avg_ms'])} | {fmt(r['max_ms'])} | {r['server_cpu_secs']:.2f} "
              f"| {fmt(per100k)} | {r['server_rcvbuf_drops']} | {other:.1f} |")
        if r["loss_pct"] < MAX_LOSS_PCT:
            key = (r["server"], r["generator"])
            best[key] = max(best[key], r["rate"])
    print(f"\nHighest offered rate with under {MAX_LOSS_PCT:g}% loss:\n")
    print("| server | generator | DISCOVERs/s |")
    print("|---|---|--:|")
    for (server, gen) in dict.fromkeys((r["server"], r["generator"]) for r in rows):
        print(f"| {server} | {gen} | {best.get((server, gen), 'none of the rates')} |")


if __name__ == "__main__":
    if sys.argv[1] == "row":
        row(sys.argv[2:])
    else:
        table(sys.argv[2])
