#!/usr/bin/env python3
"""Summarise benches/load results as Markdown tables (stdlib only).

usage: report.py RESULTS_TSV SCENARIOS_TSV MEMORY_TSV TARGETS ROUNDS

RESULTS_TSV:   round scenario target status rps p50_ms p99_ms detail   (status: ok|invalid|failed|na)
SCENARIOS_TSV: name label                                              (table order)
MEMORY_TSV:    target idle_kb with_kb n alive after_kb status
TARGETS:       comma-separated column order, e.g. direct,nginx,haproxy,stepstone
"""
import statistics
import sys

PEERS = ("nginx", "haproxy")


def read_tsv(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if line:
                    rows.append(line.split("\t"))
    except FileNotFoundError:
        pass
    return rows


def fmt_rps(v):
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def fmt_ms(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def table(header, rows, align):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        out = []
        for c, w, a in zip(cells, widths, align):
            out.append(str(c).rjust(w) if a == "r" else str(c).ljust(w))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                         for w, a in zip(widths, align)) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def main():
    results_tsv, scenarios_tsv, memory_tsv, targets_arg, rounds = sys.argv[1:6]
    targets = [t for t in targets_arg.split(",") if t]
    rounds = int(rounds)
    scenarios = read_tsv(scenarios_tsv)

    runs = {}  # (scenario, target) -> list of (status, rps, p50, p99)
    for row in read_tsv(results_tsv):
        _, sc, tg, status, rps, p50, p99 = row[:7]
        runs.setdefault((sc, tg), []).append(
            (status, float(rps or 0), float(p50 or 0), float(p99 or 0)))

    med = {}  # (scenario, target) -> median rps of valid runs
    out = []
    header = ["scenario"] + targets
    for peer in PEERS:
        if "stepstone" in targets and peer in targets:
            header.append(f"stepstone/{peer}")
    rows = []
    invalid_seen = False
    for name, label in scenarios:
        row = [label]
        for tg in targets:
            rs = runs.get((name, tg), [])
            valid = [r for r in rs if r[0] == "ok"]
            if not rs:
                row.append("-")
            elif all(r[0] == "na" for r in rs):
                row.append("n/a")
            elif not valid:
                row.append("INVALID")
                invalid_seen = True
            else:
                rps = statistics.median(r[1] for r in valid)
                p50 = statistics.median(r[2] for r in valid)
                p99 = statistics.median(r[3] for r in valid)
                med[(name, tg)] = rps
                cell = f"{fmt_rps(rps)} {fmt_ms(p50)}/{fmt_ms(p99)}"
                if len(valid) < len(rs):
                    cell += f" ({len(valid)}/{len(rs)} valid)"
                    invalid_seen = True
                row.append(cell)
        for peer in PEERS:
            if "stepstone" in targets and peer in targets:
                a, b = med.get((name, "stepstone")), med.get((name, peer))
                row.append(f"{a / b:.2f}" if a and b else "-")
        rows.append(row)
    out.append(f"Throughput: req/s (median of {rounds} round{'s' if rounds != 1 else ''}) "
               "and latency p50/p99 in ms; wrk -t1 on CPU 0, each proxy on CPU 1.")
    out.append("")
    out.append(table(header, rows, ["l"] + ["r"] * (len(header) - 1)))
    if invalid_seen:
        out.append("")
        out.append("INVALID: every run had non-2xx answers or socket errors (not counted); "
                   "(k/n valid): only k of n rounds counted.")

    proxies = [t for t in targets if t != "direct"]
    if "direct" in targets and proxies:
        rows = []
        for name, label in scenarios:
            d = med.get((name, "direct"))
            r = [label]
            for p in proxies:
                v = med.get((name, p))
                r.append(f"{v / d:.2f}" if v and d else "-")
            rows.append(r)
        out.append("")
        out.append("Proxy/direct throughput ratio:")
        out.append("")
        out.append(table(["scenario"] + [f"{p}/direct" for p in proxies], rows,
                         ["l"] + ["r"] * len(proxies)))

    mem = read_tsv(memory_tsv)
    if mem:
        rows = []
        for m in mem:
            tg, idle, with_, n, alive, after, status = (m + [""] * 7)[:7]
            if status != "ok":
                rows.append([tg, f"{int(idle) / 1024:.1f}" if idle else "-", "-", n or "-",
                             "-", f"{int(after) / 1024:.1f}" if after else "-", status])
                continue
            idle, with_, n, alive = int(idle), int(with_), int(n), int(alive)
            per = (with_ - idle) / n
            note = "" if alive == n else f"only {alive}/{n} still open"
            rows.append([tg, f"{idle / 1024:.1f}", f"{with_ / 1024:.1f}", str(n), f"{per:.1f}",
                         f"{int(after) / 1024:.1f}" if after else "-", note])
        out.append("")
        out.append("Memory: VmRSS (process + children) in MiB; KB/conn = (with - idle) / N "
                   "for N idle keep-alive connections after one GET /ok each.")
        out.append("")
        out.append(table(["proxy", "idle MiB", "with N MiB", "N", "KB/conn", "idle after load MiB",
                          "note"], rows, ["l", "r", "r", "r", "r", "r", "l"]))
    print("\n".join(out))


if __name__ == "__main__":
    main()
