#!/usr/bin/env python3
"""Measurement and report half of bench/run (stdlib only).

    bench.py phase SPEC.json OUT.jsonl   run one phase's rounds, append one record per run
    bench.py report WORKDIR RESULTS_DIR  table on stdout, latest.json + timestamped copy

bench/run starts and stops every process; this file only drives wrk, reads /proc and does
the arithmetic. A spec names the targets by the pid of their root process: CPU time and RSS
are summed over that process and all its descendants (nginx: master + workers; next start:
whatever node processes it spawns; the gateway: one process, all its threads).
"""
import json
import os
import platform
import resource
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- /proc helpers

def children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(rest[1]), []).append(int(name))
    return kids


def tree(root):
    """root and all its descendants that are alive now."""
    kids = children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cpu_ticks(root):
    """utime+stime+cutime+cstime summed over the tree: reaped children land in cutime/cstime
    of their parent, so a before/after difference stays right when processes come and go."""
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # rest[0] is field 3 (state): utime..cstime are fields 14..17.
        total += sum(int(x) for x in rest[11:15])
    return total


def rss_kib(root):
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


TCP_COUNTERS = ("RetransSegs", "TCPLossProbes", "DelayedACKLost", "TCPWantZeroWindowAdv",
                "ListenOverflows")


def tcp_counters():
    """Machine-wide TCP counters from /proc/net/snmp and /proc/net/netstat (as nstat shows)."""
    out = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        with open(path) as f:
            lines = f.read().splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            for k, v in zip(head.split()[1:], vals.split()[1:]):
                if k in TCP_COUNTERS:
                    out[k] = int(v)
    return out


def cpu_times():
    """{'cpu0': (busy, total), ...} jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if re.match(r"cpu\d+ ", line):
                parts = line.split()
                vals = [int(x) for x in parts[1:9]]
                idle = vals[3] + vals[4]
                out[parts[0]] = (sum(vals) - idle, sum(vals), vals[7])  # busy, total, steal
    return out


def ipis():
    """{'cpu0': n, ...}: inter-processor interrupts each CPU has received that wake or preempt
    a task there (/proc/interrupts RES "Rescheduling" + CAL "Function call"). A task on one CPU
    waking a sleeper on another, idle CPU costs the waker's CPU this interrupt (in a VM, an
    exit to the host), so a proxy that sleeps more often costs the load CPU more per request."""
    out = {}
    with open("/proc/interrupts") as f:
        cpus = f.readline().split()
        for line in f:
            parts = line.split()
            if parts and parts[0] in ("RES:", "CAL:"):
                for cpu, v in zip(cpus, parts[1:1 + len(cpus)]):
                    key = cpu.lower()
                    out[key] = out.get(key, 0) + int(v)
    return out


def stub_status(url):
    """nginx stub_status -> (accepts, requests). Our own request is one accept, one request."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        a, h, q = (int(x) for x in text.split("\n")[2].split())
        return a, q
    except Exception:  # noqa: BLE001 - a missing number is reported as null, not a crash
        return None


# ---------------------------------------------------------------- wrk

class Budget:
    """Seconds the whole session may still spend on waiting for quiet and on re-runs, kept in
    a file so both phases share it. None = no file = unlimited."""

    def __init__(self, path):
        self.path = path
        self.left = None
        if path and os.path.exists(path):
            with open(path) as f:
                self.left = float(f.read().strip() or 0)

    def ok(self):
        return self.left is None or self.left > 0

    def spend(self, seconds):
        if self.left is not None:
            self.left = max(0.0, self.left - seconds)
            with open(self.path, "w") as f:
                f.write(f"{self.left:.1f}\n")


def quiet_wait(limit):
    """Waits (at most `limit` s) until the CPUs are nearly idle between runs: other work on
    the machine (a build, a test suite) skews every number. Returns (seconds waited, quiet)."""
    t0 = time.monotonic()
    while True:
        a = cpu_times()
        time.sleep(0.3)
        b = cpu_times()
        busy = sum(b[c][0] - a[c][0] for c in b) / CLK_TCK / 0.3  # in CPUs
        if busy < 0.10:
            return time.monotonic() - t0, True
        if time.monotonic() - t0 >= limit:
            return time.monotonic() - t0, False


def run_wrk(spec, url, conns, duration, script, args, during=None):
    """Runs wrk; `during(proc)` (optional) is called while it runs."""
    threads = max(1, min(int(spec["wrk_threads"]), conns))
    cmd = ["taskset", "-c", spec["load_cpu"], "wrk", "-t", str(threads), "-c", str(conns),
           "-d", f"{duration}s", "--timeout", "5s", "-s", script, url]
    if args:
        cmd += ["--"] + [str(a) for a in args]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if during:
            during(p)
        stdout, stderr = p.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return {"requests": 0, "wrk_failed": "wrk did not finish in time"}
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            res = json.loads(line[len("BENCH_JSON "):])
            res["wrk_cpu_s"] = wrk_cpu
            return res
    return {"requests": 0, "wrk_failed": (stderr or stdout).strip()[-500:]}


def measure(spec, target, cfg, url, script, args, duration):
    """One wrk run against one target with the /proc and stub_status readings around it."""
    root = target["pid"]
    up = spec.get("stub_status")
    budget = spec["_budget"]
    waited, quiet = (0, None)
    if spec.get("wait_quiet") and budget.ok():
        limit = spec["wait_quiet"] if budget.left is None else min(spec["wait_quiet"], budget.left)
        waited, quiet = quiet_wait(limit)
        budget.spend(waited)
    s0, c0, n0, i0 = stub_status(up), cpu_times(), tcp_counters(), ipis()
    t0 = cpu_ticks(root)
    u0 = cpu_ticks(spec["upstream_pid"]) if spec.get("upstream_pid") else None
    d0 = cpu_ticks(spec["db_pid"]) if spec.get("db_pid") else None
    w0 = time.monotonic()
    mid = {}

    def steady(proc):
        # Upstream connections opened in the middle of the run only: when wrk stops, the
        # requests in flight are aborted and a proxy must drop those upstream connections,
        # so the whole-run count mixes pool churn with that end-of-run artifact.
        margin = min(0.5, duration * 0.1)
        time.sleep(margin)
        a = stub_status(up)
        t_a = time.monotonic()
        time.sleep(max(0.0, w0 + duration - margin - time.monotonic()))
        b = stub_status(up) if proc.poll() is None else None
        mid["queries"] = (a is not None) + (b is not None)
        if a and b:
            mid["upstream_new_conns_mid"] = b[0] - a[0] - 1  # minus the status request
            mid["mid_window_s"] = round(time.monotonic() - t_a, 2)

    res = run_wrk(spec, url, cfg["conns"], duration, script, args, steady if up else None)
    wall = time.monotonic() - w0
    rss = rss_kib(root)  # at the end of the round, before the connections are gone
    t1 = cpu_ticks(root)
    u1 = cpu_ticks(spec["upstream_pid"]) if spec.get("upstream_pid") else None
    d1 = cpu_ticks(spec["db_pid"]) if spec.get("db_pid") else None
    c1, s1, n1, i1 = cpu_times(), stub_status(up), tcp_counters(), ipis()
    n = res.get("requests", 0)
    secs = res.get("duration_us", 0) / 1e6 or duration
    rec = dict(res)
    rec.update({k: v for k, v in mid.items() if k != "queries"})
    rec["tcp"] = {k: n1.get(k, 0) - n0.get(k, 0) for k in TCP_COUNTERS}  # machine-wide
    rec["rps"] = n / secs if secs else 0.0
    rec["cpu_s"] = (t1 - t0) / CLK_TCK
    rec["cpu_us_per_req"] = (t1 - t0) / CLK_TCK * 1e6 / n if n else None
    rec["cpu_util"] = (t1 - t0) / CLK_TCK / wall
    rec["rss_load_kib"] = rss
    if u0 is not None:
        rec["upstream_cpu_us_per_req"] = (u1 - u0) / CLK_TCK * 1e6 / n if n else None
    # What bounds req/s when the load CPU is saturated: wrk + upstream (+ database) per request.
    load_ticks = (u1 - u0 if u0 is not None else 0) + (d1 - d0 if d0 is not None else 0)
    rec["load_cpu_us_per_req"] = (load_ticks / CLK_TCK + res.get("wrk_cpu_s", 0)) * 1e6 / n \
        if n else None
    rec["ipi_per_req"] = {cpu: (i1[cpu] - i0.get(cpu, 0)) / n for cpu in i1} if n else {}
    rec["proxy_cpu_ipi_per_req"] = rec["ipi_per_req"].get(f"cpu{spec.get('proxy_cpu', 0)}")
    if d0 is not None:
        rec["db_cpu_us_per_req"] = (d1 - d0) / CLK_TCK * 1e6 / n if n else None
    if s0 and s1:
        q = 1 + mid.get("queries", 0)  # our own status requests
        rec["upstream_new_conns"] = s1[0] - s0[0] - q
        rec["upstream_requests"] = s1[1] - s0[1] - q
    else:
        rec["upstream_new_conns"] = rec["upstream_requests"] = None
    busy_all = 0
    for cpu in sorted(c1):
        busy = c1[cpu][0] - c0[cpu][0]
        busy_all += busy
        total = c1[cpu][1] - c0[cpu][1]
        rec[f"{cpu}_busy"] = busy / total if total else None
        rec[f"{cpu}_steal"] = (c1[cpu][2] - c0[cpu][2]) / total if total else None
    # CPU used by anything that is not part of the bench: busy time of all CPUs minus the
    # target, the upstream/orchestrator, the database and wrk. In CPUs (0.25 = a quarter core).
    ours = (t1 - t0) + (d1 - d0 if d0 is not None else 0)
    if u0 is not None and spec.get("upstream_pid") != root:
        ours += u1 - u0
    rec["foreign_cpu"] = max(0.0, (busy_all - ours) / CLK_TCK - res.get("wrk_cpu_s", 0)) / wall
    rec["quiet_waited_s"] = round(waited, 1)
    rec["quiet_before"] = quiet
    return rec


# ---------------------------------------------------------------- phases

def phase(spec_path, out_path):
    with open(spec_path) as f:
        spec = json.load(f)
    name = spec["phase"]
    rounds, duration, warmup = spec["rounds"], spec["duration"], spec["warmup"]
    lib = os.path.dirname(os.path.abspath(__file__))
    records = []

    idle = {t["name"]: rss_kib(t["pid"]) for t in spec["targets"]}
    for t in spec["targets"]:
        records.append({"phase": name, "kind": "idle", "target": t["name"],
                        "rss_idle_kib": idle[t["name"]]})

    if name == "native":
        script = os.path.join(lib, "disconnect.lua")
        block = spec["rows_per_block"]
        next_block = [0]

        def args_for(cfg):
            if cfg["path"] == "check":  # many `disconnected` rows, round-robin
                return ["cycle", spec["check_first"], spec["check_last"],
                        max(1, min(int(spec["wrk_threads"]), cfg["conns"]))]
            if cfg["path"] == "check-hot":  # one `disconnected` row for every request
                return ["fixed", spec["check_first"]]
            if next_block[0] >= spec["blocks"]:
                return None  # spare blocks for re-runs used up
            first = spec["first_id"] + next_block[0] * block
            next_block[0] += 1
            return ["walk", first, first + block - 1,
                    max(1, min(int(spec["wrk_threads"]), cfg["conns"]))]
    else:
        script = os.path.join(lib, "passthrough.lua")

        def args_for(cfg):
            return []

    total = len(spec["configs"]) * len(spec["targets"]) * rounds
    retries, noise_max = spec.get("retries", 0), spec.get("noise_max", 1e9)
    spec["_budget"] = budget = Budget(spec.get("budget_file"))
    done = 0
    for cfg in spec["configs"]:
        label = " ".join(f"{k}={v}" for k, v in cfg.items() if k != "url_path")
        wsecs = spec.get("warmup_native", warmup) if name == "native" else warmup
        if wsecs > 0:
            for t in spec["targets"]:
                # Warm-up: fills connection pools, warms Node's JIT on the very path measured
                # (a disconnect warm-up walks a row block of its own); not recorded.
                w = run_wrk(spec, t["url"] + cfg["url_path"] if name != "native" else t["url"],
                            cfg["conns"], wsecs, script, args_for(cfg) or ["fixed", 1])
                w.update({"phase": name, "kind": "warmup", "target": t["name"]})
                w.update({k: v for k, v in cfg.items() if k != "url_path"})
                records.append(w)
        for r in range(1, rounds + 1):
            for t in spec["targets"]:
                done += 1
                url = t["url"] + (cfg["url_path"] if name != "native" else "")
                args = args_for(cfg)
                for attempt in range(retries + 1):
                    rec = measure(spec, t, cfg, url, script, args, duration)
                    rec.update({"phase": name, "kind": "run", "round": r, "target": t["name"],
                                "attempt": attempt + 1})
                    rec.update({k: v for k, v in cfg.items() if k != "url_path"})
                    if rec["foreign_cpu"] <= noise_max or attempt == retries:
                        break
                    if not budget.ok():
                        rec["rerun_budget_exhausted"] = True
                        break
                    # Something outside the bench used the CPUs meanwhile: run it again.
                    nxt = args_for(cfg)
                    if nxt is None:
                        break
                    args = nxt
                    budget.spend(duration)
                    rec["kind"] = "discarded"
                    records.append(rec)
                    print(f"  [{name} {done}/{total}] {label} round {r} {t['name']:<8} "
                          f"discarded: {rec['foreign_cpu']:.2f} core used outside the bench; "
                          "again", file=sys.stderr, flush=True)
                records.append(rec)
                errs = sum(rec.get(k, 0) for k in
                           ("err_connect", "err_read", "err_write", "err_timeout"))
                answers = (f"2xx {rec.get('s2xx', 0)} 400 {rec.get('s400', 0)} other "
                           f"{sum(rec.get(k, 0) for k in ('s404', 's5xx', 'sother'))}"
                           if name == "native" else f"non-2xx {rec.get('err_status', 0)}")
                print(f"  [{name} {done}/{total}] {label} round {r} {t['name']:<8} "
                      f"{rec['rps']:>9.0f} req/s  p99 {rec.get('p99_us', 0) / 1000:7.2f} ms  "
                      f"cpu {fmt(rec['cpu_us_per_req'], 1)} us/req  {answers}  sock-err {errs}"
                      + (f"  WRK FAILED: {rec['wrk_failed']}" if rec.get("wrk_failed") else ""),
                      file=sys.stderr, flush=True)
    with open(out_path, "a") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


# ---------------------------------------------------------------- report

def fmt(v, nd=0):
    if v is None:
        return "-"
    return f"{v:.{nd}f}"


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "rounds": values}


def limit_of(sm, direct=False):
    """What saturated: the target's CPU (util >= 95 %), the load CPU (wrk + upstream/db at
    >= 95 % busy), both, or neither (then the target was waiting: latency, a lock, a queue)."""
    a = not direct and (sm["cpu_util"] or 0) >= 0.95
    b = (sm["cpu1_busy"] or 0) >= 0.95
    return {(True, True): "both", (True, False): "target", (False, True): "load",
            (False, False): "none"}[(a, b)]


def conn_pair(sm):
    """'mid/all': new connections in the middle of a run / over the whole run (medians)."""
    return f"{fmt(sm['upstream_new_conns_mid'])}/{fmt(sm['upstream_new_conns'])}"


def fmt_spread(s, nd=2):
    if not s:
        return "-"
    return f"{s['median']:.{nd}f} [{s['min']:.{nd}f}..{s['max']:.{nd}f}]"


def cmd_out(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except Exception:  # noqa: BLE001
        return None


def machine_facts(meta):
    model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "mem_total_mib": mem,
        "loadavg_at_report": open("/proc/loadavg").read().split()[:3],
        "nginx": cmd_out(["nginx", "-v"]),
        "wrk": cmd_out(["wrk", "-v"]),
        "node": cmd_out(["node", "-v"]) if shutil.which("node") else None,
        "postgres": meta.get("postgres_version"),
        "next": meta.get("next_version"),
        "gateway_binary_sha256": meta.get("gateway_sha256"),
        "gateway_git_head": meta.get("git_head"),
        "gateway_git_dirty_files": meta.get("git_dirty"),
    }


RATIO_KEYS = (("rps", "rps"), ("cpu_us_per_req", "cpu/req"), ("p99_us", "p99"))


def ratios(runs, num, den, keys=RATIO_KEYS):
    """Per-round ratio num/den for each key, then median [min..max] over rounds."""
    by_round = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["target"]] = r
    out = {}
    for key, _ in keys:
        vals = []
        for rr in by_round.values():
            a, b = rr.get(num), rr.get(den)
            if a and b and a.get(key) and b.get(key):
                vals.append(a[key] / b[key])
        out[key] = spread(vals)
    return out


def summarize(runs):
    errs = lambda r: sum(r.get(k, 0) for k in ("err_connect", "err_read", "err_write",
                                                "err_timeout"))
    return {
        "rounds": len(runs),
        "rps": med(r["rps"] for r in runs),
        "p50_ms": med(r.get("p50_us", 0) / 1000 for r in runs),
        "p99_ms": med(r.get("p99_us", 0) / 1000 for r in runs),
        "cpu_us_per_req": med(r.get("cpu_us_per_req") for r in runs),
        "cpu_util": med(r.get("cpu_util") for r in runs),
        "upstream_cpu_us_per_req": med(r.get("upstream_cpu_us_per_req") for r in runs),
        "load_cpu_us_per_req": med(r.get("load_cpu_us_per_req") for r in runs),
        "proxy_cpu_ipi_per_req": med(r.get("proxy_cpu_ipi_per_req") for r in runs),
        "db_cpu_us_per_req": med(r.get("db_cpu_us_per_req") for r in runs),
        "rss_load_kib": max((r["rss_load_kib"] for r in runs), default=None),
        "upstream_new_conns": med(r.get("upstream_new_conns") for r in runs),
        "upstream_new_conns_rounds": [r.get("upstream_new_conns") for r in runs],
        "upstream_new_conns_mid": med(r.get("upstream_new_conns_mid") for r in runs),
        "upstream_new_conns_mid_rounds": [r.get("upstream_new_conns_mid") for r in runs],
        "tcp": {k: sum((r.get("tcp") or {}).get(k, 0) for r in runs) for k in TCP_COUNTERS},
        "upstream_requests_per_req": med(
            (r["upstream_requests"] / r["requests"]) if r.get("upstream_requests") is not None
            and r.get("requests") else None for r in runs),
        "cpu0_busy": med(r.get("cpu0_busy") for r in runs),
        "cpu1_busy": med(r.get("cpu1_busy") for r in runs),
        "foreign_cpu_max": max((r.get("foreign_cpu") or 0) for r in runs) if runs else None,
        "steal": max((r.get("cpu0_steal") or 0) + (r.get("cpu1_steal") or 0) for r in runs)
        if runs else None,
        "requests_total": sum(r.get("requests", 0) for r in runs),
        "non_2xx_total": sum(r.get("err_status", 0) for r in runs),
        "socket_errors_total": sum(errs(r) for r in runs),
        "status": {k: sum(r.get(k, 0) for r in runs)
                   for k in ("s2xx", "s400", "s404", "s5xx", "sother", "overflow")}
        if runs and "s2xx" in runs[0] else None,
        "wrk_failed": [r["wrk_failed"] for r in runs if r.get("wrk_failed")],
    }


def report(workdir, results_dir):
    with open(os.path.join(workdir, "meta.json")) as f:
        meta = json.load(f)
    recs = []
    path = os.path.join(workdir, "records.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            recs = [json.loads(line) for line in f if line.strip()]
    idle = {(r["phase"], r["target"]): r["rss_idle_kib"] for r in recs if r["kind"] == "idle"}
    runs = [r for r in recs if r["kind"] == "run"]
    findings, failures = [], []
    result = {"machine": machine_facts(meta), "settings": meta.get("settings", {}),
              "notes": meta.get("notes", []), "passthrough": [], "native": [],
              "skipped": meta.get("skipped", []), "findings": findings}

    def check_target(phase_name, label, target, s):
        if s["requests_total"] == 0:
            failures.append(f"{phase_name} {label} {target}: no answer at all"
                            + (f" ({s['wrk_failed'][0]})" if s["wrk_failed"] else ""))
        if s["socket_errors_total"]:
            findings.append(f"{phase_name} {label} {target}: {s['socket_errors_total']} socket "
                            "errors (connect/read/write/timeout) reported by wrk")

    lines = []
    out = lines.append
    s = meta.get("settings", {})
    out(f"# whatsapp-gateway bench ({meta.get('started')}, {s.get('mode')} mode): "
        f"{s.get('rounds')} round(s) x {s.get('duration')} s per target, alternating; "
        f"medians over rounds")
    out(f"# proxy/app under test pinned to CPU {s.get('proxy_cpu')}, wrk + upstream/db/"
        f"orchestrator to CPU {s.get('load_cpu')}; workers: nginx {s.get('workers')}, "
        f"gateway threads {s.get('workers')}, wrk threads {s.get('wrk_threads')}")

    # ---- pass-through
    pt = [r for r in runs if r["phase"] == "passthrough"]
    if pt:
        out("")
        out("## Pass-through (static upstream nginx; cpu = proxy process, or the upstream "
            "itself for direct)")
        hdr = (f"{'size':>4} {'conns':>5} {'target':<8} {'req/s':>9} {'p50 ms':>7} "
               f"{'p99 ms':>7} {'cpu us/req':>10} {'util':>5} {'up us/req':>9} {'load us':>7} "
               f"{'ipi/req':>7} "
               f"{'rss idle':>9} {'rss load':>9} {'new up':>9} {'non2xx':>6} {'sockerr':>7} "
               f"{'limit':>6}")
        out(hdr)
        configs = []
        for r in pt:
            key = (r["size"], r["conns"])
            if key not in configs:
                configs.append(key)
        for size, conns in configs:
            cruns = [r for r in pt if r["size"] == size and r["conns"] == conns]
            targets = []
            for r in cruns:
                if r["target"] not in targets:
                    targets.append(r["target"])
            entry = {"size": size, "conns": conns, "targets": {}, "ratios": {}}
            for t in targets:
                truns = [r for r in cruns if r["target"] == t]
                sm = summarize(truns)
                sm["rss_idle_kib"] = idle.get(("passthrough", t))
                cpu = sm["upstream_cpu_us_per_req"] if t == "direct" else sm["cpu_us_per_req"]
                sm["cpu_us_per_req_reported"] = cpu
                sm["limit"] = limit_of(sm, direct=(t == "direct"))
                entry["targets"][t] = sm
                entry.setdefault("runs", []).extend(truns)
                check_target("passthrough", f"{size}/{conns}c", t, sm)
                if sm["non_2xx_total"]:
                    findings.append(f"passthrough {size}/{conns}c {t}: {sm['non_2xx_total']} "
                                    "non-2xx answers")
                out(f"{size:>4} {conns:>5} {t:<8} {fmt(sm['rps']):>9} {fmt(sm['p50_ms'], 2):>7} "
                    f"{fmt(sm['p99_ms'], 2):>7} {fmt(cpu, 1):>10} "
                    f"{fmt((sm['cpu_util'] or 0) * 100) + '%' if t != 'direct' else '-':>5} "
                    f"{fmt(sm['upstream_cpu_us_per_req'], 1):>9} "
                    f"{fmt(sm['load_cpu_us_per_req'], 1):>7} "
                    f"{fmt(sm['proxy_cpu_ipi_per_req'], 2):>7} "
                    f"{fmt((sm['rss_idle_kib'] or 0) / 1024, 1) + 'M':>9} "
                    f"{fmt(sm['rss_load_kib'] / 1024, 1) + 'M':>9} "
                    f"{conn_pair(sm):>9} {sm['non_2xx_total']:>6} "
                    f"{sm['socket_errors_total']:>7} {sm['limit']:>6}")
            # For direct the "proxy cpu" is the upstream's own: copy it so ratios line up.
            for r in cruns:
                if r["target"] == "direct":
                    r["cpu_us_per_req"] = r.get("upstream_cpu_us_per_req")
            for num, den in (("gateway", "nginx"), ("gateway", "direct"), ("nginx", "direct")):
                if num in targets and den in targets:
                    entry["ratios"][f"{num}/{den}"] = ratios(cruns, num, den)
            result["passthrough"].append(entry)
        out("load us = CPU of wrk + upstream per request (what bounds req/s when the load CPU "
            "is the limit); ipi/req = wake-up interrupts (RES+CAL) the proxy's CPU received per "
            "request")
        out("")
        out("Ratios (per-round pairs, median [min..max]); rps > 1 and cpu/p99 < 1 favour the "
            "numerator. cpu for direct = the upstream nginx's own us/req.")
        out(f"{'size':>4} {'conns':>5} {'ratio':<16} {'rps':>20} {'cpu/req':>20} {'p99':>20}")
        for e in result["passthrough"]:
            for name, rt in e["ratios"].items():
                out(f"{e['size']:>4} {e['conns']:>5} {name:<16} {fmt_spread(rt['rps']):>20} "
                    f"{fmt_spread(rt['cpu_us_per_req']):>20} {fmt_spread(rt['p99_us']):>20}")
        for e in result["passthrough"]:
            for t, sm in e["targets"].items():
                # Steady-state churn: the median round opened upstream connections mid-run.
                if t != "direct" and (sm["upstream_new_conns_mid"] or 0) > 0:
                    findings.append(
                        f"passthrough {e['size']}/{e['conns']}c {t}: upstream connection churn "
                        f"in steady state, new upstream connections in mid-run windows "
                        f"{sm['upstream_new_conns_mid_rounds']} (whole runs "
                        f"{sm['upstream_new_conns_rounds']})")
                tcp = sm["tcp"]
                if t != "direct" and (tcp.get("RetransSegs") or tcp.get("ListenOverflows")):
                    findings.append(
                        f"passthrough {e['size']}/{e['conns']}c {t}: TCP retransmissions on "
                        f"loopback during its runs (machine-wide counters: {tcp})")

    # ---- native
    nv = [r for r in runs if r["phase"] == "native"]
    if nv:
        out("")
        out("## Native route vs Node (PostgreSQL + static orchestrator; cpu = app process "
            "tree, db = all postgres processes)")
        out(f"{'path':<10} {'conns':>5} {'target':<8} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'cpu us/req':>10} {'util':>5} {'db us/req':>9} {'rss idle':>9} {'rss load':>9} "
            f"{'new orch':>9} {'2xx':>7} {'400':>7} {'other':>6} {'sockerr':>7} {'limit':>6}")
        configs = []
        for r in nv:
            key = (r["path"], r["conns"])
            if key not in configs:
                configs.append(key)
        for path, conns in configs:
            cruns = [r for r in nv if r["path"] == path and r["conns"] == conns]
            targets = []
            for r in cruns:
                if r["target"] not in targets:
                    targets.append(r["target"])
            entry = {"path": path, "conns": conns, "targets": {}, "ratios": {}, "runs": cruns}
            for t in targets:
                sm = summarize([r for r in cruns if r["target"] == t])
                sm["rss_idle_kib"] = idle.get(("native", t))
                sm["limit"] = limit_of(sm)
                entry["targets"][t] = sm
                st = sm["status"] or {}
                expected = "s2xx" if path == "disconnect" else "s400"  # check paths: 400
                other = sum(v for k, v in st.items() if k not in (expected, "overflow"))
                check_target("native", f"{path}/{conns}c", t, sm)
                if other:
                    findings.append(f"native {path}/{conns}c {t}: {other} unexpected statuses "
                                    f"{ {k: v for k, v in st.items() if v} }")
                if st.get("overflow"):
                    findings.append(f"native {path}/{conns}c {t}: {st['overflow']} requests ran "
                                    "past the seeded rows (raise --rows-per-sec)")
                out(f"{path:<10} {conns:>5} {t:<8} {fmt(sm['rps']):>8} {fmt(sm['p50_ms'], 2):>7} "
                    f"{fmt(sm['p99_ms'], 2):>7} {fmt(sm['cpu_us_per_req'], 1):>10} "
                    f"{fmt((sm['cpu_util'] or 0) * 100) + '%':>5} "
                    f"{fmt(sm['db_cpu_us_per_req'], 1):>9} "
                    f"{fmt((sm['rss_idle_kib'] or 0) / 1024, 1) + 'M':>9} "
                    f"{fmt(sm['rss_load_kib'] / 1024, 1) + 'M':>9} "
                    f"{conn_pair(sm):>9} {st.get('s2xx', 0):>7} "
                    f"{st.get('s400', 0):>7} {other:>6} {sm['socket_errors_total']:>7} "
                    f"{sm['limit']:>6}")
            if "gateway" in targets and "node" in targets:
                entry["ratios"]["gateway/node"] = ratios(
                    cruns, "gateway", "node",
                    RATIO_KEYS + (("db_cpu_us_per_req", "db/req"),))
            result["native"].append(entry)
        # Warm-ups and discarded re-runs disconnected rows too.
        ok = sum(r.get("s2xx", 0) for r in recs if r["phase"] == "native"
                 and r["kind"] in ("run", "discarded", "warmup") and r["path"] == "disconnect")
        # A request in flight when wrk stops still disconnects its row (both apps finish it):
        # up to `conns` more rows than 200s per run. More than that, or fewer rows, is wrong.
        inflight = sum(r["conns"] for r in recs if r["phase"] == "native"
                       and r["kind"] in ("run", "discarded", "warmup")
                       and r["path"] == "disconnect")
        rows = meta.get("rows_disconnected")
        if rows is not None:
            result["native_rows_disconnected"] = rows
            result["native_2xx_on_disconnect"] = ok
            if not ok <= rows <= ok + inflight:
                findings.append(f"native: {rows} rows disconnected in the database but wrk "
                                f"counted {ok} answers 200 on the disconnect path (at most "
                                f"{inflight} requests were cut off by the end of a run)")
        out("")
        out("Ratios gateway/node (per-round pairs, median [min..max])")
        out(f"{'path':<10} {'conns':>5} {'rps':>22} {'cpu/req':>22} {'p99':>22} {'db/req':>22}")
        for e in result["native"]:
            rt = e["ratios"].get("gateway/node")
            if rt:
                out(f"{e['path']:<10} {e['conns']:>5} {fmt_spread(rt['rps']):>22} "
                    f"{fmt_spread(rt['cpu_us_per_req']):>22} {fmt_spread(rt['p99_us']):>22} "
                    f"{fmt_spread(rt['db_cpu_us_per_req']):>22}")

    for msg in meta.get("skipped", []):
        out("")
        out(f"SKIPPED: {msg}")
    discarded = [r for r in recs if r["kind"] == "discarded"]
    result["discarded_runs"] = discarded
    if discarded:
        findings.append(f"{len(discarded)} run(s) discarded and run again because processes "
                        f"outside the bench used > {s.get('noise_max')} core meanwhile")
    noisy = [r for r in runs if (r.get("foreign_cpu") or 0) > float(s.get("noise_max", 0.15))]
    if noisy:
        worst = max(noisy, key=lambda r: r["foreign_cpu"])
        findings.append(
            f"other load on the machine during {len(noisy)} of {len(runs)} kept runs (CPU used "
            f"by processes outside the bench > {s.get('noise_max')} core; worst {worst['foreign_cpu']:.2f} core in "
            f"{worst['phase']} {worst.get('size', worst.get('path'))}/{worst['conns']}c round "
            f"{worst['round']} {worst['target']}): those runs are skewed")
    if any(r.get("rerun_budget_exhausted") for r in runs) or any(
            r.get("quiet_before") is None for r in runs) and s.get("wait_quiet") not in (None, "0"):
        findings.append("the --noise-budget ran out: later runs were neither held back for "
                        "quiet nor re-run")
    unquiet = [r for r in runs if r.get("quiet_before") is False]
    if unquiet:
        findings.append(f"{len(unquiet)} run(s) started without the machine going idle first "
                        f"(--wait-quiet {s.get('wait_quiet')} s elapsed)")
    steal = max((r.get("cpu0_steal") or 0) + (r.get("cpu1_steal") or 0) for r in runs) \
        if runs else 0
    if steal > 0.02:
        findings.append(f"CPU steal up to {steal * 100:.1f} % in a round: noisy host")
    findings.extend(meta.get("findings", []))
    result["failures"] = failures
    if findings:
        out("")
        out("Findings:")
        for f_ in findings:
            out(f"  - {f_}")
    if failures:
        out("")
        out("FAILED (a target did not answer):")
        for f_ in failures:
            out(f"  - {f_}")
    m = result["machine"]
    out("")
    out(f"machine: {m['nproc']} x {m['cpu_model']}, kernel {m['kernel']}; {m['nginx']}; "
        f"{m['wrk']}; node {m['node']}; {m['postgres'] or ''}")
    print("\n".join(lines))
    result["table"] = lines

    os.makedirs(results_dir, exist_ok=True)
    stamp = meta.get("stamp") or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for name in ("latest.json", f"{stamp}{'-smoke' if s.get('mode') == 'smoke' else ''}.json"):
        with open(os.path.join(results_dir, name), "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    print(f"\nwritten: {os.path.join(results_dir, 'latest.json')} and {name}", file=sys.stderr)
    return 1 if failures or not runs else 0


def main(argv):
    if len(argv) == 4 and argv[1] == "phase":
        phase(argv[2], argv[3])
        return 0
    if len(argv) == 4 and argv[1] == "report":
        return report(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
