#!/usr/bin/env python3
"""Tables and completion charts of benches/storm_pxe_compare.sh.

    storm_pxe_report.py RESULTS.jsonl OUT_DIR > results.md

Reads one JSON object per storm run (the storm's report plus what the script measured
about the server), prints Markdown tables (medians over the repeats, with the range), and
writes OUT_DIR/completion-<shaping>-<load>.svg: boots completed over time, one line per
server, from each server's median run (by wall time). Standard library only.
"""

import json
import statistics
import sys
from collections import defaultdict

# Link rate of the shaped runs (tbf rate 1gbit), bits per second.
SHAPED_RATE = {"1gbit": 1e9}
# The bound: a shaped storm completes within this many wire times.
WIRE_BOUND_FACTOR = 1.3
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def med_range(values, fmt="{:.2f}"):
    if not values:
        return "-"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def wire_secs(r):
    rate = SHAPED_RATE.get(r["shaping"])
    return r["server_tx_bytes"] * 8 / rate if rate else None


def median_run(runs):
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["wall_secs"])
    return ok[(len(ok) - 1) // 2] if ok else None


def tables(rows):
    groups = defaultdict(list)
    for r in rows:
        groups[(r["shaping"], r["load_arg"], r["server_name"])].append(r)
    cases = list(dict.fromkeys((r["shaping"], r["load_arg"]) for r in rows))
    for shaping, load in cases:
        title = "unshaped veth" if shaping == "none" else f"server egress shaped to {shaping} (tbf)"
        print(f"\n#### {title}, {load}\n")
        shaped = shaping in SHAPED_RATE
        head = ("| server | runs | booted | failed | wall s | boots/s | boot p50 ms | boot p99 ms "
                "| DISCOVER / REQUEST retransmits | server CPU s per 1000 boots | server peak RSS MiB "
                "| rcvbuf drops | storm CPU s | other CPU s |")
        if shaped:
            head += " wire-time bound s | wall / bound |"
        print(head)
        print("|---|--:" + "|--:" * (head.count("|") - 3) + "|")
        for (sh, ld, server), runs in groups.items():
            if (sh, ld) != (shaping, load):
                continue
            ok = [r for r in runs if "error" not in r]
            if not ok:
                print(f"| {server} | {len(runs)} | storm failed: {runs[0]['error']} |")
                continue
            failed = sum(r["failed"] for r in ok)
            if failed:
                reasons = defaultdict(int)
                for r in ok:
                    for stage, st in r["stages"].items():
                        for k, v in st["failures"].items():
                            reasons[f"{stage} {k}"] += v
                failed = f"{failed} ({', '.join(f'{k} {v}' for k, v in reasons.items())})"
            per_k = [r["server_cpu_secs"] / r["booted"] * 1000 for r in ok if r["booted"]]
            rss = max(max(r["server_hwm_kib"], r["server_tree_rss_kib"]) for r in ok) / 1024
            other = [max(0.0, r["machine_cpu_secs"] - r["server_cpu_secs"] - r["generator_cpu_secs"])
                     for r in ok]
            line = (f"| {server} | {len(ok)} | {sum(r['booted'] for r in ok)} | {failed} "
                    f"| {med_range([r['wall_secs'] for r in ok])} "
                    f"| {med_range([r['boots_per_sec'] for r in ok], '{:.0f}')} "
                    f"| {med_range([r['boot_latency']['p50_ms'] for r in ok], '{:.0f}')} "
                    f"| {med_range([r['boot_latency']['p99_ms'] for r in ok], '{:.0f}')} "
                    f"| {sum(r['discover_retransmissions'] for r in ok)} / "
                    f"{sum(r['request_retransmissions'] for r in ok)} "
                    f"| {med_range(per_k)} | {rss:.1f} "
                    f"| {sum(r['server_rcvbuf_drops'] for r in ok)} "
                    f"| {med_range([r['generator_cpu_secs'] for r in ok])} "
                    f"| {max(other):.1f} |")
            if shaped:
                bounds = [wire_secs(r) for r in ok]
                ratios = [r["wall_secs"] / b for r, b in zip(ok, bounds) if b]
                line += f" {med_range(bounds)} | {med_range(ratios)} |"
            print(line)
        print("\nPer-stage latency of the median run (ms, p50 / p99 / max):\n")
        print("| server | discover | request | tftp | http |")
        print("|---|---|---|---|---|")
        for (sh, ld, server), runs in groups.items():
            r = median_run(runs) if (sh, ld) == (shaping, load) else None
            if r is None:
                continue

            def cell(s):
                st = r["stages"].get(s)
                if not st:
                    return "-"
                lat = st["latency"]
                return f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} / {lat['max_ms']:.1f}"

            print(f"| {server} | {cell('discover')} | {cell('request')} | {cell('tftp')} | {cell('http')} |")


def nice_step(span, ticks=6):
    raw = span / ticks
    mag = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def chart(rows, shaping, load, path):
    """SVG: boots completed over time, one line per server (its median run)."""
    series = []
    for server in dict.fromkeys(r["server_name"] for r in rows):
        runs = [r for r in rows if (r["server_name"], r["shaping"], r["load_arg"]) == (server, shaping, load)]
        r = median_run(runs)
        if r and r.get("completion_curve"):
            series.append((server, r))
    if not series:
        return False
    w, h, left, right, top, bottom = 760, 420, 70, 210, 40, 50
    pw, ph = w - left - right, h - top - bottom
    x_max = max(r["completion_curve"][-1][0] for _, r in series) * 1.05
    y_max = max(r["machines"] for _, r in series)
    sx = lambda ms: left + ms / x_max * pw
    sy = lambda n: top + ph - n / y_max * ph
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="14">PXE storm: {y_max} machines booted over time '
           f'({"unshaped" if shaping == "none" else shaping + " link"}, {load})</text>']
    step = nice_step(x_max)
    t = 0.0
    while t <= x_max:
        out.append(f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{t / 1000:g}</text>')
        t += step
    for k in range(0, 5):
        n = y_max * k / 4
        out.append(f'<line x1="{left}" y1="{sy(n):.1f}" x2="{left + pw}" y2="{sy(n):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{sy(n) + 4:.1f}" text-anchor="end">{n:.0f}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 12}" text-anchor="middle">seconds since the first DISCOVER</text>')
    out.append(f'<text x="16" y="{top + ph / 2}" transform="rotate(-90 16 {top + ph / 2})" '
               f'text-anchor="middle">machines booted</text>')
    for i, (server, r) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        pts = [(0.0, 0.0)] + [(ms, n) for ms, n in r["completion_curve"]]
        path_d = " ".join(f"{sx(ms):.1f},{sy(n):.1f}" for ms, n in pts)
        out.append(f'<polyline points="{path_d}" fill="none" stroke="{color}" stroke-width="2"/>')
        ly = top + 14 + i * 36
        out.append(f'<line x1="{left + pw + 12}" y1="{ly}" x2="{left + pw + 32}" y2="{ly}" stroke="{color}" stroke-width="3"/>')
        out.append(f'<text x="{left + pw + 38}" y="{ly + 4}">{server}</text>')
        out.append(f'<text x="{left + pw + 38}" y="{ly + 18}" fill="#555">{r["booted"]} in {r["wall_secs"]:.2f} s</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return True


def main():
    results, out_dir = sys.argv[1], sys.argv[2]
    rows = [json.loads(line) for line in open(results) if line.strip()]
    tables(rows)
    print()
    for shaping, load in dict.fromkeys((r["shaping"], r["load_arg"]) for r in rows):
        name = f"completion-{shaping}-{load.replace('=', '-')}.svg"
        if chart(rows, shaping, load, f"{out_dir}/{name}"):
            print(f"Chart: `{name}`  ")


if __name__ == "__main__":
    main()
