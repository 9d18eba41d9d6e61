#!/usr/bin/env python3
"""Tables and SVG charts for the echo benchmark (standard library only).

    lab/scripts/chart.py echo lab/results/echo-DATE.tsv [--svg lab/results/echo.svg]
    lab/scripts/chart.py cost lab/results/cost-DATE.tsv [--svg lab/results/cost.svg]
    lab/scripts/chart.py multicore lab/results/multicore-DATE.tsv

Each prints Markdown tables (pasted into BENCHMARKS.md) and writes an SVG bar chart. The TSV
files come from lab/scripts/echo-bench.sh and lab/scripts/cost-per-rtt.sh.
"""

import csv
import statistics
import sys
from collections import defaultdict

FLOOR = "epoll"
OURS = ("selreactor", "selreactor-step")
PEERS = ("polling", "mio", "tokio", "calloop")
ORDER = (FLOOR,) + OURS + PEERS
COLOURS = {
    "epoll": "#7f7f7f",
    "selreactor": "#d62728",
    "selreactor-step": "#ff9896",
    "polling": "#1f77b4",
    "mio": "#2ca02c",
    "tokio": "#9467bd",
    "calloop": "#ff7f0e",
}


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def ordered(names):
    known = [n for n in ORDER if n in names]
    return known + sorted(n for n in names if n not in ORDER)


def escape(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def bar_chart(path, title, panels):
    """panels: [(panel title, unit, [(group label, [(series, value)])])], drawn side by side
    as grouped vertical bars, one colour per series (server)."""
    panel_w, panel_h, top, bottom, left = 430, 300, 60, 70, 60
    width = left + len(panels) * (panel_w + 30)
    legend_rows = -(-len(ORDER) // max(1, (width - left) // 110))
    height = top + panel_h + bottom + 18 * legend_rows
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    series_seen = []
    for p, (panel_title, unit, groups) in enumerate(panels):
        x0 = left + p * (panel_w + 30)
        values = [v for _, bars in groups for _, v in bars if v is not None]
        vmax = max(values) * 1.15 if values else 1.0
        out.append(
            f'<text x="{x0 + panel_w / 2}" y="{top - 12}" text-anchor="middle" '
            f'font-size="13">{escape(panel_title)}</text>'
        )
        out.append(
            f'<line x1="{x0}" y1="{top + panel_h}" x2="{x0 + panel_w}" y2="{top + panel_h}" stroke="black"/>'
        )
        out.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{top + panel_h}" stroke="black"/>')
        for i in range(5):
            v = vmax * i / 4
            y = top + panel_h - panel_h * i / 4
            out.append(f'<text x="{x0 - 4}" y="{y + 4}" text-anchor="end">{v:.3g}</text>')
            out.append(
                f'<line x1="{x0}" y1="{y}" x2="{x0 + panel_w}" y2="{y}" stroke="#ddd"/>'
            )
        out.append(
            f'<text x="{x0 - 45}" y="{top + panel_h / 2}" text-anchor="middle" '
            f'transform="rotate(-90 {x0 - 45} {top + panel_h / 2})">{escape(unit)}</text>'
        )
        group_w = panel_w / max(len(groups), 1)
        for g, (label, bars) in enumerate(groups):
            bar_w = (group_w - 12) / max(len(bars), 1)
            gx = x0 + g * group_w + 6
            for b, (series, value) in enumerate(bars):
                if series not in series_seen:
                    series_seen.append(series)
                if value is None:
                    continue
                h = panel_h * value / vmax
                x = gx + b * bar_w
                out.append(
                    f'<rect x="{x:.1f}" y="{top + panel_h - h:.1f}" width="{bar_w - 1:.1f}" '
                    f'height="{h:.1f}" fill="{COLOURS.get(series, "#17becf")}">'
                    f"<title>{escape(series)} {escape(label)}: {value:.4g} {escape(unit)}</title></rect>"
                )
            out.append(
                f'<text x="{gx + (group_w - 12) / 2:.1f}" y="{top + panel_h + 16}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    per_row = max(1, (width - left) // 110)
    for i, series in enumerate(series_seen):
        lx = left + (i % per_row) * 110
        ly = top + panel_h + 40 + (i // per_row) * 18
        out.append(
            f'<rect x="{lx}" y="{ly}" width="12" height="12" fill="{COLOURS.get(series, "#17becf")}"/>'
        )
        out.append(f'<text x="{lx + 16}" y="{ly + 10}">{escape(series)}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"\nwrote {path}")


def config_label(row):
    size = int(row["size"])
    size = f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"
    return f'{row["conns"]} x {size}'


def echo(path, svg):
    rows = read_tsv(path)
    by_config = defaultdict(list)
    for row in rows:
        by_config[config_label(row)].append(row)
    configs = sorted(by_config, key=lambda c: (int(by_config[c][0]["size"]), int(by_config[c][0]["conns"])))
    servers = ordered({r["server"] for r in rows})
    rounds = len({r["round"] for r in rows})
    print(f"Round trips per second, median of {rounds} interleaved runs per server "
          f"(ratio to floor: median over runs of run / mean of the floor runs just before and after it)\n")
    header = "| config | " + " | ".join(servers) + " |"
    print(header)
    print("|" + "---|" * (len(servers) + 1))
    ratios = {}
    medians = {}
    for config in configs:
        runs = by_config[config]
        cells = []
        for server in servers:
            mine = [r for r in runs if r["server"] == server]
            if not mine:
                cells.append("")
                continue
            median = statistics.median(float(r["rtt_per_sec"]) for r in mine)
            medians[(config, server)] = median
            pair = []
            for r in mine:
                if server == FLOOR:
                    continue
                same = [f for f in runs if f["server"] == FLOOR and f["round"] == r["round"]]
                seq = int(r["seq"])
                before = [f for f in same if int(f["seq"]) < seq]
                after = [f for f in same if int(f["seq"]) > seq]
                around = ([max(before, key=lambda f: int(f["seq"]))] if before else []) + (
                    [min(after, key=lambda f: int(f["seq"]))] if after else []
                )
                if around:
                    floor = statistics.mean(float(f["rtt_per_sec"]) for f in around)
                    pair.append(float(r["rtt_per_sec"]) / floor)
            ratio = statistics.median(pair) if pair else 1.0
            ratios[(config, server)] = ratio
            cells.append(f"{median:,.0f} ({ratio:.2f})")
        print(f"| {config} | " + " | ".join(cells) + " |")

    print("\nselreactor over each peer: the ratio of their ratios to the floor (each run is first "
          "divided by the floor runs around it, which cancels most of the drift between runs)\n")
    peers = [s for s in servers if s not in OURS]
    print("| config | " + " | ".join(f"selreactor / {p}" for p in peers) + " | selreactor-step / epoll |")
    print("|" + "---|" * (len(peers) + 2))
    for config in configs:
        ours = ratios.get((config, "selreactor"))
        cells = [
            f"{ours / ratios[(config, p)]:.2f}" if ours and ratios.get((config, p)) else ""
            for p in peers
        ]
        step = ratios.get((config, "selreactor-step"))
        cells.append(f"{step:.2f}" if step else "")
        print(f"| {config} | " + " | ".join(cells) + " |")

    print("\nLatency, median over runs of each run's percentile (µs): p50 / p99 / p99.9\n")
    print(header)
    print("|" + "---|" * (len(servers) + 1))
    for config in configs:
        cells = []
        for server in servers:
            mine = [r for r in by_config[config] if r["server"] == server]
            if not mine:
                cells.append("")
                continue
            p = [statistics.median(float(r[k]) for r in mine) for k in ("p50_us", "p99_us", "p999_us")]
            cells.append(f"{p[0]:.0f} / {p[1]:.0f} / {p[2]:.0f}")
        print(f"| {config} | " + " | ".join(cells) + " |")

    groups = [(c, [(s, ratios.get((c, s))) for s in servers]) for c in configs]
    bar_chart(
        svg or "lab/results/echo-throughput.svg",
        "Echo throughput relative to the raw epoll floor (higher is better)",
        [("round trips/s ÷ floor (median of A-B-A pairs)", "ratio to floor", groups)],
    )


def cost(path, svg):
    rows = read_tsv(path)
    servers = ordered({r["server"] for r in rows})
    conns_list = sorted({int(r["conns"]) for r in rows})
    get = {(r["server"], int(r["conns"])): r for r in rows}

    def num(row, key):
        try:
            return float(row[key])
        except (KeyError, TypeError, ValueError):
            return None

    print("Per echo round trip (server side). syscalls: all of them, with waits / reads / writes / "
          "epoll_ctl; instructions: user space, callgrind; CPU: utime+stime\n")
    print("| server | conns | syscalls | waits | reads | writes | epoll_ctl | instructions | × floor | CPU ns | × floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for conns in conns_list:
        floor = get.get((FLOOR, conns))
        for server in servers:
            row = get.get((server, conns))
            if not row:
                continue
            instr, cpu = num(row, "instructions_per_rtt"), num(row, "cpu_ns_per_rtt")
            fi, fc = (num(floor, "instructions_per_rtt"), num(floor, "cpu_ns_per_rtt")) if floor else (None, None)
            ratio_i = f"{instr / fi:.2f}" if instr and fi else ""
            ratio_c = f"{cpu / fc:.2f}" if cpu and fc else ""
            print(
                f"| {server} | {conns} | {float(row['syscalls_per_rtt']):.3f} | {float(row['waits_per_rtt']):.3f} | "
                f"{float(row['reads_per_rtt']):.3f} | {float(row['writes_per_rtt']):.3f} | {float(row['ctl_per_rtt']):.3f} | "
                f"{instr:.0f} | {ratio_i} | {cpu:.0f} | {ratio_c} |"
                if instr is not None and cpu is not None
                else f"| {server} | {conns} | {row['syscalls_per_rtt']} | {row['waits_per_rtt']} | {row['reads_per_rtt']} | "
                f"{row['writes_per_rtt']} | {row['ctl_per_rtt']} | {row['instructions_per_rtt']} | | {row['cpu_ns_per_rtt']} | |"
            )

    print("\nTargets (selreactor = examples/echo.rs; selreactor-step = same reactor, the floor's I/O per event)\n")
    print("| server | conns | syscalls ≤ floor (+5% at 16+) | instructions ≤ 1.2 × floor | fewer instructions than mio, tokio, calloop |")
    print("|---|---|---|---|---|")
    for conns in conns_list:
        floor = get.get((FLOOR, conns))
        for server in OURS:
            row = get.get((server, conns))
            if not row or not floor:
                continue
            limit = float(floor["syscalls_per_rtt"]) * (1.0 if conns == 1 else 1.05)
            sys_ok = float(row["syscalls_per_rtt"]) <= limit + 1e-9
            instr, fi = num(row, "instructions_per_rtt"), num(floor, "instructions_per_rtt")
            instr_ok = "n/a" if instr is None or fi is None else ("yes" if instr <= 1.2 * fi else "NO")
            peers_ok = []
            for peer in ("mio", "tokio", "calloop"):
                other = get.get((peer, conns))
                pi = num(other, "instructions_per_rtt") if other else None
                if instr is not None and pi is not None:
                    peers_ok.append(f"{peer} {'yes' if instr < pi else 'NO'}")
            print(
                f"| {server} | {conns} | {'yes' if sys_ok else 'NO'} ({float(row['syscalls_per_rtt']):.3f} vs {limit:.3f}) | "
                f"{instr_ok} | {', '.join(peers_ok)} |"
            )

    panels = []
    for key, title, unit in (
        ("syscalls_per_rtt", "syscalls per round trip", "syscalls"),
        ("instructions_per_rtt", "user instructions per round trip", "instructions"),
        ("cpu_ns_per_rtt", "server CPU time per round trip", "ns"),
    ):
        groups = [
            (f"{c} conn" + ("s" if c > 1 else ""), [(s, num(get[(s, c)], key) if (s, c) in get else None) for s in servers])
            for c in conns_list
        ]
        panels.append((title, unit, groups))
    bar_chart(svg or "lab/results/cost-per-rtt.svg", "Echo server cost per round trip (lower is better)", panels)


def multicore(path, svg):
    rows = read_tsv(path)
    threads = sorted({int(r["threads"]) for r in rows})
    print("| server threads | runs | median round trips/s | × 1 thread |")
    print("|---|---|---|---|")
    base = None
    for t in threads:
        values = [float(r["rtt_per_sec"]) for r in rows if int(r["threads"]) == t]
        median = statistics.median(values)
        base = base or median
        print(f"| {t} | {len(values)} | {median:,.0f} | {median / base:.2f} |")


def main(argv):
    if len(argv) < 3 or argv[1] not in ("echo", "cost", "multicore"):
        print(__doc__, file=sys.stderr)
        return 2
    svg = argv[argv.index("--svg") + 1] if "--svg" in argv else None
    {"echo": echo, "cost": cost, "multicore": multicore}[argv[1]](argv[2], svg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
