#!/usr/bin/env python3
"""Summarise benches/load results as Markdown tables (stdlib only).

usage: report.py RESULTS_TSV SCENARIOS_TSV MEMORY_TSV TARGETS ROUNDS [CONNS_TSV [ROUTES_TSV]]

RESULTS_TSV:   round scenario target status rps p50_ms p99_ms detail cpu_us busy origin_us
               [user_pct [syscalls]]
               (status: ok|invalid|failed|na; cpu_us: the target's CPU time per request;
               busy: "b0/b1", percent busy of CPU 0 and CPU 1 over the run; origin_us: the
               origin's CPU time per request in the same run; user_pct: the share of the
               target's CPU time spent in user space; syscalls: "all/waits[/switches]", its
               system calls per request, the epoll waits among them and its context
               switches per request, "-" when perf could not
               count them)
SCENARIOS_TSV: name label                                              (table order)
MEMORY_TSV:    target idle_kb with_kb n alive after_kb status
TARGETS:       comma-separated column order, e.g. direct,nginx,haproxy,stepstone
CONNS_TSV:     target mode n status before_kb after_kb kb_per_conn alive seconds
ROUTES_TSV:    hosts status rps p99_ms cpu_us check_s serve_s [origin_cpu_us]
"""
import statistics
import sys

PEERS = ("nginx", "haproxy")
# A peer's tuned variants: the better of them (throughput, latency, CPU) stands for the peer.
VARIANTS = {"nginx": ("nginx", "nginx_nobuf"), "haproxy": ("haproxy",)}
# The scenarios whose CPU per request has a target (issue 17: at most 0.9x the cheaper peer).
CPU_TARGET_SCENARIOS = ("ok_c64", "1k_c64", "64k_c64", "post64k_c64", "ok_c256", "tls_ok_c64",
                        "h2_ok_c64", "cache_1k_c64")


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


def per_target(scenarios, targets, runs, cell):
    """A row per scenario, a column per target: `cell` of the runs recorded, or "-"."""
    return [[label] + [cell(runs[(name, tg)]) if runs.get((name, tg)) else "-"
                       for tg in targets]
            for name, label in scenarios]


def per_target_table(out, caption, scenarios, targets, runs, cell):
    """Append `caption` and a [`per_target`] table of `runs` to `out`."""
    rows = per_target(scenarios, targets, runs, cell)
    out.append("")
    out.append(caption)
    out.append("")
    out.append(table(["scenario"] + targets, rows, ["l"] + ["r"] * len(targets)))


def best(values, scenario, peer, pick):
    """The peer's value in a scenario: the better (`pick`: max or min) of its variants."""
    got = [values[(scenario, v)] for v in VARIANTS.get(peer, (peer,)) if (scenario, v) in values]
    return pick(got) if got else None


def paired_cpu_ratios(cpu_rounds, scenario, peers):
    """Stepstone's CPU per request over the cheaper peer's in the same round, one ratio per
    round that has both, sorted. The runs of one round follow each other within seconds, so
    a drift of the shared host over minutes moves both sides of each ratio alike; the ratio
    of the medians mixes runs from different rounds."""
    mine = cpu_rounds.get((scenario, "stepstone"), {})
    ratios = []
    for rnd, c in mine.items():
        theirs = [cpu_rounds[(scenario, v)][rnd] for p in peers for v in VARIANTS.get(p, (p,))
                  if rnd in cpu_rounds.get((scenario, v), {})]
        if theirs:
            ratios.append(c / min(theirs))
    return sorted(ratios)


def spread(ratios):
    """The per-round ratios' range as text ("0.81-0.97"), or "" for fewer than two rounds:
    a target that the range straddles is within what the host's noise moves in this run."""
    return f"{ratios[0]:.2f}-{ratios[-1]:.2f}" if len(ratios) > 1 else ""


def targets_summary(scenarios, targets, med, p99_med, cpu_med, cpu_rounds):
    """Issue 17's targets, met or not, in this run: throughput at least both peers', p99 at
    most nginx's, CPU per request at most 0.9x the cheaper peer's (on its scenarios). Ratios
    get three decimals here: 0.9014 is a miss that two would print as 0.90."""
    peers = [p for p in PEERS if p in targets]
    labels = dict(scenarios)
    tput, p99, cpu, paired = ([], []), ([], []), ([], []), ([], [])  # (met, missed) notes

    def note(name, value):
        return f"{labels[name]} {value}"

    for name, _ in scenarios:
        mine = med.get((name, "stepstone"))
        ratios = [(p, mine / b) for p in peers
                  if mine and (b := best(med, name, p, max))]
        if ratios:
            worst = min(ratios, key=lambda r: r[1])
            tput[worst[1] < 1.0].append(note(name, f"{worst[1]:.3f} of {worst[0]}"))
        mine, theirs = p99_med.get((name, "stepstone")), best(p99_med, name, "nginx", min)
        if "nginx" in peers and mine and theirs:
            p99[mine > theirs].append(note(name, f"{fmt_ms(mine)} against {fmt_ms(theirs)} ms"))
        if name in CPU_TARGET_SCENARIOS:
            mine = cpu_med.get((name, "stepstone"))
            costs = [c for c in (best(cpu_med, name, p, min) for p in peers) if c]
            if mine and costs:
                r = mine / min(costs)
                cpu[r > 0.9].append(note(name, f"{r:.3f}"))
            rs = paired_cpu_ratios(cpu_rounds, name, peers)
            if rs:
                r = statistics.median(rs)
                rng = spread(rs)
                paired[r > 0.9].append(note(name, f"{r:.3f}" + (f" (rounds {rng})" if rng else "")))

    def line(what, got):
        met, missed = got
        total = len(met) + len(missed)
        if not total:
            return None
        s = f"- {what}: {len(met)} of {total}"
        return s + (f"; missed: {', '.join(missed)}" if missed else "")

    lines = [x for x in (
        line("throughput at least 1.0x both peers (the worse ratio)", tput),
        line("p99 at most nginx's (its better variant)", p99),
        line("CPU per request at most 0.9x the cheaper peer (the scenarios that have the "
             "target)", cpu),
        line("the same, paired within each round (median of the per-round ratios)",
             paired)) if x]
    if not lines:
        return []
    return ["", "Against issue 17's targets, in this run:", ""] + lines


def main():
    results_tsv, scenarios_tsv, memory_tsv, targets_arg, rounds = sys.argv[1:6]
    targets = [t for t in targets_arg.split(",") if t]
    rounds = int(rounds)
    scenarios = read_tsv(scenarios_tsv)

    runs = {}  # (scenario, target) -> list of (status, rps, p50, p99, cpu_us)
    busy = {}  # (scenario, target) -> list of (cpu0 %, cpu1 %) of valid runs
    origin = {}  # (scenario, target) -> list of the origin's CPU us per request, valid runs
    user = {}  # (scenario, target) -> list of the target's user-space share in %, valid runs
    sysc = {}  # (scenario, target) -> list of the target's system calls per request, valid runs
    cpu_rounds = {}  # (scenario, target) -> {round: CPU us per request}, valid runs
    for row in read_tsv(results_tsv):
        rnd, sc, tg, status, rps, p50, p99 = row[:7]
        cpu = row[8] if len(row) > 8 else "0"
        if status == "ok" and float(cpu or 0) > 0:
            cpu_rounds.setdefault((sc, tg), {})[rnd] = float(cpu)
        runs.setdefault((sc, tg), []).append(
            (status, float(rps or 0), float(p50 or 0), float(p99 or 0), float(cpu or 0)))
        b = row[9].split("/") if len(row) > 9 else []
        if status == "ok" and len(b) == 2 and all(x.isdigit() for x in b):
            busy.setdefault((sc, tg), []).append((int(b[0]), int(b[1])))
        o = float(row[10]) if len(row) > 10 and row[10] else 0.0
        if status == "ok" and o > 0:
            origin.setdefault((sc, tg), []).append(o)
        if status == "ok" and len(row) > 11 and row[11].isdigit():
            user.setdefault((sc, tg), []).append(int(row[11]))
        parts = row[12].split("/") if len(row) > 12 else []
        if status == "ok" and len(parts) in (2, 3):
            sysc.setdefault((sc, tg), []).append(tuple(float(x) for x in parts))

    med = {}  # (scenario, target) -> median rps of valid runs
    p99_med = {}  # (scenario, target) -> median p99 of valid runs
    cpu_med = {}  # (scenario, target) -> median CPU microseconds per request of valid runs
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
                p99_med[(name, tg)] = p99
                cpus = [r[4] for r in valid if r[4] > 0]
                if cpus:
                    cpu_med[(name, tg)] = statistics.median(cpus)
                cell = f"{fmt_rps(rps)} {fmt_ms(p50)}/{fmt_ms(p99)}"
                if len(valid) < len(rs):
                    cell += f" ({len(valid)}/{len(rs)} valid)"
                    invalid_seen = True
                row.append(cell)
        for peer in PEERS:
            if "stepstone" in targets and peer in targets:
                a, b = med.get((name, "stepstone")), best(med, name, peer, max)
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

    if cpu_med:
        rows = []
        peers = [p for p in PEERS if p in targets]
        for name, label in scenarios:
            r = [label] + [f"{cpu_med[(name, tg)]:.1f}" if (name, tg) in cpu_med else "-"
                           for tg in targets]
            if "stepstone" in targets and peers:
                a = cpu_med.get((name, "stepstone"))
                costs = [c for c in (best(cpu_med, name, p, min) for p in peers) if c]
                r.append(f"{a / min(costs):.2f}" if a and costs else "-")
                rs = paired_cpu_ratios(cpu_rounds, name, peers)
                r.append(f"{statistics.median(rs):.2f}" if rs else "-")
                r.append(spread(rs) or "-")
            rows.append(r)
        header = ["scenario"] + targets
        if "stepstone" in targets and peers:
            header += ["stepstone/cheaper peer", "paired", "rounds"]
        out.append("")
        out.append("CPU per request in microseconds: utime+stime of the target's processes "
                   "(master and workers; direct: the origin) over the measured run, divided by "
                   "the requests it served. A peer's cost is that of its cheaper variant. "
                   "\"paired\": the median over rounds of Stepstone's cost over the cheaper "
                   "peer's in the same round, which a drift of the shared host between rounds "
                   "does not move; \"rounds\": the lowest and highest of those per-round "
                   "ratios, the spread of the host's noise within this run.")
        out.append("")
        out.append(table(header, rows, ["l"] + ["r"] * (len(header) - 1)))

    if "stepstone" in targets:
        out += targets_summary(scenarios, targets, med, p99_med, cpu_med, cpu_rounds)

    if user:
        per_target_table(
            out,
            "User-space share of each target's CPU time, % (utime over utime+stime, "
            "median over rounds). The rest is the kernel's: on loopback a sender's "
            "system call also runs the receiving side of the TCP stack. User-space work "
            "(parsing, routing, buffers) moves this share; the kernel's part moves only "
            "with the number of system calls and segments.",
            scenarios, targets, user,
            lambda u: str(round(statistics.median(u))))

    if sysc:
        per_target_table(
            out,
            "System calls per request of each target, all / the epoll waits among them "
            "/ context switches (perf, the raw_syscalls:sys_enter and epoll_wait "
            "tracepoints and the context-switches event over its processes during the "
            "measured run; median over rounds). The calls other than waits are the "
            "kernel work a proxy's code decides. A wait that finds events ready returns "
            "at once; one that finds none puts the process to sleep (a context switch), "
            "and waking it costs the waker's CPU too: a proxy whose core has idle time "
            "sleeps more often per request than a saturated one.",
            scenarios, targets, sysc,
            lambda v: " / ".join(
                f"{statistics.median(x[i] for x in v):.{2 if i < 2 else 3}f}"
                for i in range(min(len(x) for x in v))))

    if busy:
        per_target_table(
            out,
            "Busy %, CPU 0 / CPU 1 (median over rounds): CPU 0 runs wrk and the origin, "
            "CPU 1 the target. wrk's clock for a request runs from its write to its "
            "read, so where CPU 0 is at 100 and CPU 1 is not, the queue, and most of "
            "the latency measured, is wrk's own; a faster proxy there raises wrk's p50 "
            "and p99.",
            scenarios, targets, busy,
            lambda b: "/".join(
                str(round(statistics.median(x[i] for x in b))) for i in (0, 1)))

    if origin:
        per_target_table(
            out,
            "The origin's CPU per request during each target's run (median over rounds): "
            "the host's speed at the time. When the shared host changes speed between "
            "runs (seen here: about 1.5x for minutes), it moves with it, as the targets' "
            "own figures do. Within a row it also differs with how each proxy uses the "
            "origin (connection reuse, wake-ups). Cache hits do not reach the origin.",
            scenarios, targets, origin,
            lambda o: f"{statistics.median(o):.1f}")

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
    if len(sys.argv) > 6:
        out.extend(conns_table(read_tsv(sys.argv[6])))
    if len(sys.argv) > 7:
        out.extend(routes_table(read_tsv(sys.argv[7])))
    print("\n".join(out))


def conns_table(rows_in):
    """KB of RSS per idle connection, by proxy and arrival, one column per connection count."""
    if not rows_in:
        return []
    ns = sorted({int(r[2]) for r in rows_in})
    cells = {}
    order = []
    for r in rows_in:
        tg, mode, n, status = r[0], r[1], int(r[2]), r[3]
        if (tg, mode) not in order:
            order.append((tg, mode))
        if status == "ok":
            per, alive = float(r[6]), int(r[7])
            cell = f"{per:.2f}"
            if alive != n:
                cell += f" (only {alive} open)"
        else:
            cell = status
        cells[(tg, mode, n)] = cell
    rows = [[tg, "one by one" if mode == "one" else mode]
            + [cells.get((tg, mode, n), "-") for n in ns] for tg, mode in order]
    return ["", "Connection scale: KB of RSS per idle keep-alive connection (RSS 2.5 s after the "
            "last response, less RSS before the first connection; one GET /ok each, opened one "
            "by one or all connected first and every request sent at once).", "",
            table(["proxy", "arrival"] + [f"{n} conns" for n in ns], rows,
                  ["l", "l"] + ["r"] * len(ns))]


def routes_table(rows_in):
    """Stepstone end to end with N host routes, against its one-route figures.

    One row per step and round (the steps alternate within each round): each figure is the
    median over a step's rounds without errors; a step with none shows its first failure."""
    if not rows_in:
        return []
    def origin(r):
        return float(r[7]) if len(r) > 7 and r[7] else 0.0

    by_hosts = {}
    for r in rows_in:
        by_hosts.setdefault(r[0], []).append(r)
    merged = []
    for hosts, rs in by_hosts.items():
        ok = [r for r in rs if r[1] == "ok"]
        if not ok:
            merged.append(rs[0])
            continue
        med = [statistics.median(float(r[i]) for r in ok) for i in range(2, 7)]
        merged.append([hosts, "ok"] + [str(v) for v in med]
                      + [str(statistics.median(origin(r) for r in ok))])
    rows_in = merged
    rounds = max(len(rs) for rs in by_hosts.values())

    base = {}
    for r in rows_in:
        if r[1] == "ok" and not base:
            base = {"rps": float(r[2]), "cpu": float(r[4]), "origin": origin(r)}
    rows = []
    for r in rows_in:
        hosts, status = r[0], r[1]
        if status != "ok":
            rows.append([hosts, status] + ["-"] * 8)
            continue
        rps, p99, cpu, check, serve = (float(x) for x in r[2:7])
        o = origin(r)
        # the CPU ratio with the machine's speed taken out: each row's proxy cost over the
        # origin's cost in the same run
        norm = (cpu / o) / (base["cpu"] / base["origin"]) if o and base.get("origin") else None
        rows.append([hosts, fmt_rps(rps), fmt_ms(p99), f"{cpu:.1f}",
                     f"{cpu / base['cpu']:.2f}" if base.get("cpu") else "-",
                     f"{o:.1f}" if o else "-", f"{norm:.2f}" if norm else "-",
                     f"{rps / base['rps']:.2f}" if base.get("rps") else "-",
                     f"{check:.2f}", f"{serve:.2f}"])
    return ["", "Route scale (Stepstone alone): GET /ok c64 for the last of N exact host routes "
            "(plus a wildcard+prefix route per 20 hosts); one process per row, all started "
            f"first, then measured in turn, {rounds} round(s) with the order rotated each "
            "round; medians; ratios against the first row; "
            "`-t` and start-to-first-200 times in seconds. The origin's CPU per request in the "
            "same run is the machine's speed then; \"per origin\" is the CPU ratio over it, "
            "which a slowdown of the shared host between rows does not move.", "",
            table(["hosts", "req/s", "p99 ms", "CPU us/req", "CPU ratio", "origin us/req",
            "CPU ratio per origin", "req/s ratio", "-t s", "serve s"], rows,
                  ["r"] * 10)]


if __name__ == "__main__":
    main()
