#!/usr/bin/env python3
"""Time soup-merge against the machine's floors and against mergekit, a naive torch script and a numpy
streaming script, on synthetic Llama-style checkpoints. Usually started through bench/run.sh.

    python3 bench/bench.py --sizes 1,4 --phases tools,threads,cold [--dtype bf16] [--reps 5]
    python3 bench/bench.py --sizes 1,2,4,8 --phases scaling --reps 3 --big-gib 8 --big-reps 1

Phases, run for each size in turn (inputs are made once per size, then deleted unless --keep-inputs):
  tools    the floors, soup-merge and the baselines, alternating, --reps repetitions, then compare.py
           on the outputs of the last repetition
  cold     one repetition of each tool after dropping the page cache (needs root; skipped otherwise)
  threads  soup-merge with RAYON_NUM_THREADS=1 and 2, alternating, and `cmp` of their outputs
  scaling  the floors and soup-merge only, for the size-vs-time and size-vs-RSS series

The floors are the machine's own limits, each one plain command timed like a tool:
  read   `cat` of the inputs to /dev/null
  write  `dd if=/dev/zero bs=1M conv=fsync` into a fresh file as long as the first input
  copy   `cp` of the first input, then `sync` of the copy
A merge must read every input and write the output, so max(read, write) is the tight floor: a merger
that overlaps the two perfectly takes that long. Every ratio to a floor is taken within one
repetition (the floors and the tool ran minutes apart at most) and reported as min, median and max.

Timing: wall clock around each process, peak RSS from `/usr/bin/time -v` (os.wait4 when absent).
Before every timed run the previous output is deleted, `sync` runs, the inputs are read once untimed
(warm phases) and the harness waits --settle seconds, so that no tool pays for another's cache misses
or dirty pages, and every tool starts from the same state of free memory.
Prints a markdown report on stdout and writes it, with the raw JSON, under DATA/results/.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import mergekit_config

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GIB = 1 << 30

FLOORS = ("floor-read", "floor-write", "floor-copy")

TOOL_TITLES = {
    "floor-read": "floor, read: `cat` inputs > /dev/null",
    "floor-write": "floor, write: `dd` zeros, fsync",
    "floor-copy": "floor, copy: `cp` one input + `sync`",
    "soup": "soup-merge",
    "mergekit": "mergekit-yaml (linear)",
    "naive": "naive torch script",
    "numpy": "numpy streaming script",
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class OutOfSpace(Exception):
    pass


class Runner:
    """Runs one command, returns its wall time and peak RSS; keeps its stdout/stderr in a log file."""

    def __init__(self, logs):
        self.logs = logs
        self.gnu_time = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
        self.count = 0

    def run(self, label, cmd, env=None):
        self.count += 1
        log_path = os.path.join(self.logs, f"{self.count:04d}-{label}.log")
        full_env = dict(os.environ, **(env or {}))
        with open(log_path, "w") as logf, tempfile.NamedTemporaryFile("r", suffix=".time") as tfile:
            logf.write(" ".join(cmd) + "\n")
            logf.flush()
            wrapped = [self.gnu_time, "-v", "-o", tfile.name] + cmd if self.gnu_time else cmd
            start = time.perf_counter()
            proc = subprocess.Popen(wrapped, stdout=logf, stderr=subprocess.STDOUT, env=full_env,
                                    start_new_session=True, preexec_fn=first_to_kill)
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            except BaseException:
                os.killpg(proc.pid, signal.SIGTERM)  # the tool, and /usr/bin/time around it
                raise
            wall = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            rss_kib = usage.ru_maxrss
            if self.gnu_time:
                for line in tfile.read().splitlines():
                    if "Maximum resident set size" in line:
                        rss_kib = int(line.rsplit(":", 1)[1])
        if proc.returncode != 0:
            with open(log_path) as f:
                tail = f.read()[-2000:]
            log(f"{label} failed with exit code {proc.returncode}; log {log_path}:\n{tail}")
        return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mib": rss_kib / 1024,
                "rc": proc.returncode, "log": log_path}


def first_to_kill():
    """Make a timed tool the out-of-memory killer's first choice, so a baseline that needs more memory
    than the machine has fails alone instead of taking down other work on a shared machine."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def warm(paths):
    """Read every byte of `paths` once, untimed, so the timed run finds them in the page cache."""
    buf = memoryview(bytearray(8 << 20))
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def size_of(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
    return os.path.getsize(path)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Bench:
    def __init__(self, a):
        self.a = a
        self.data = os.path.abspath(a.data)
        self.out_dir = os.path.join(self.data, "out")
        self.logs = os.path.join(self.data, "logs")
        for d in (self.data, self.out_dir, self.logs):
            os.makedirs(d, exist_ok=True)
        self.runner = Runner(self.logs)
        self.py = a.python
        self.report = []
        self.raw = {"started": now(), "machine": machine(self.data), "command": a.command, "sizes": {}}

    # ---- inputs -------------------------------------------------------------------------------
    def input_dir(self, gib):
        tag = f"{gib:g}g-{self.a.dtype}" + (f"-h{self.a.hidden}-v{self.a.vocab}" if self.a.hidden else "")
        return os.path.join(self.data, "in-" + tag)

    def make_inputs(self, gib):
        """Three model directories (model.safetensors + config.json), seeds 0, 1, 2; reused if present."""
        base = self.input_dir(gib)
        dirs = [os.path.join(base, f"seed{s}") for s in range(3)]
        todo = [d for d in dirs if not os.path.exists(os.path.join(d, ".done"))]
        if todo:
            kept_outputs = len(self.a.tools.split(",")) + 1 if "tools" in self.a.phases else 2
            need = len(todo) * gib * GIB * 1.02 + (kept_outputs + 1) * gib * GIB
            if free_bytes(self.data) < need:
                raise OutOfSpace(f"error: {self.data} has {free_bytes(self.data) / GIB:.1f} GiB free, the {gib:g} GiB run "
                         f"needs about {need / GIB:.1f} GiB; free space or pass --data elsewhere")
        for seed, d in enumerate(dirs):
            if d not in todo:
                continue
            log(f"making {d} ({gib:g} GiB {self.a.dtype})")
            cmd = [self.py, os.path.join(HERE, "make_checkpoint.py"), d,
                   "--gib", str(gib), "--dtype", self.a.dtype, "--seed", str(seed)]
            if self.a.hidden:
                cmd += ["--hidden", str(self.a.hidden), "--vocab", str(self.a.vocab)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            open(os.path.join(d, ".done"), "w").close()
        return dirs, [os.path.join(d, "model.safetensors") for d in dirs]

    # ---- tool commands ------------------------------------------------------------------------
    def output_path(self, tool, suffix=""):
        if tool == "mergekit":
            return os.path.join(self.out_dir, "mergekit" + suffix)
        return os.path.join(self.out_dir, f"{tool}{suffix}.safetensors")

    def command(self, tool, files, dirs, out):
        if tool == "soup":
            return [self.a.soup_merge, *files, "-o", out, "-q"]
        if tool == "naive":
            return [self.py, os.path.join(HERE, "naive_merge.py"), "-o", out, *files]
        if tool == "numpy":
            return [self.py, os.path.join(HERE, "numpy_merge.py"), "-o", out, *files]
        if tool == "mergekit":
            return [self.a.mergekit_yaml, self.mergekit_config(dirs), out, "--no-copy-tokenizer", "--quiet"]
        if tool == "floor-read":
            return ["sh", "-c", 'cat "$@" > /dev/null', "floor-read", *files]
        if tool == "floor-write":
            return ["dd", "if=/dev/zero", f"of={out}", "bs=1M", f"count={os.path.getsize(files[0])}",
                    "iflag=count_bytes", "conv=fsync", "status=none"]
        if tool == "floor-copy":
            return ["sh", "-c", 'cp -- "$1" "$2" && sync -- "$2"', "floor-copy", files[0], out]
        raise ValueError(tool)

    def mergekit_config(self, dirs):
        path = os.path.join(self.out_dir, "mergekit.yml")
        with open(path, "w") as f:
            f.write(mergekit_config.render(mergekit_config.linear_recipe(dirs, self.a.dtype)))
        return path

    def env(self, tool, threads=None):
        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if threads:
            env["RAYON_NUM_THREADS"] = str(threads)
        return env

    # ---- one timed measurement ----------------------------------------------------------------
    def measure(self, tool, files, dirs, cold=False, threads=None, suffix="", keep=False):
        """Time `tool` (a floor command or a merger) once."""
        in_bytes = sum(os.path.getsize(f) for f in files)
        out = self.output_path(tool, suffix)
        remove(out)
        os.sync()
        if cold:
            drop_caches()
        elif not self.a.no_warm:
            warm(files)
        time.sleep(self.a.settle)
        result = self.runner.run(tool + suffix, self.command(tool, files, dirs, out), self.env(tool, threads))
        out_bytes = size_of(out) if os.path.exists(out) else 0
        if tool.startswith("floor") or not keep:
            remove(out)
        result["bytes"] = {"floor-read": in_bytes, "floor-write": out_bytes,
                           "floor-copy": 2 * out_bytes}.get(tool, in_bytes + out_bytes)
        log(f"{tool}{suffix}: {result['wall']:.3f} s, {result['rss_mib']:.0f} MiB"
            + ("" if result["rc"] == 0 else f", FAILED ({result['rc']})"))
        return result

    def alternate(self, tools, files, dirs, reps, **kw):
        """reps rounds over `tools`, rotating the order each round; the last round keeps outputs."""
        runs = {t: [] for t in tools}
        for r in range(reps):
            order = tools[r % len(tools):] + tools[:r % len(tools)]
            for t in order:
                runs[t].append(self.measure(t, files, dirs, keep=(r == reps - 1), **kw))
        return runs

    # ---- phases -------------------------------------------------------------------------------
    def phase_tools(self, gib, files, dirs, cold=False):
        tools = list(FLOORS) + [t for t in self.a.tools.split(",") if t and not t.startswith("floor")]
        reps = 1 if cold else self.reps(gib)
        if cold and not drop_caches():
            self.report.append(f"Cold-cache run skipped: cannot write /proc/sys/vm/drop_caches.\n")
            return
        runs = self.alternate(tools, files, dirs, reps, cold=cold)
        summary = summarize(runs)
        ratios = floor_ratios(runs)
        key = "cold" if cold else "tools"
        self.raw["sizes"].setdefault(f"{gib:g}", {})[key] = {"runs": runs, "summary": summary, "ratios": ratios,
                                                              "commands": self.commands(tools, files, dirs)}
        title = (f"### 3 × {gib:g} GiB {self.a.dtype}, " +
                 ("cold page cache (dropped before each tool), 1 run" if cold else
                  f"warm page cache, {reps} alternating repetitions"))
        self.report += [title, "", tools_table(summary, ratios), "", ratio_lines(ratios), ""]
        if not cold:
            self.check(gib, files, [t for t in tools if not t.startswith("floor")])

    def commands(self, tools, files, dirs):
        cmds = {}
        for t in tools:
            cmds[t] = " ".join(self.command(t, files, dirs, self.output_path(t)))
        return cmds

    def check(self, gib, files, tools):
        outs = [f"{t}={self.output_path(t)}" for t in tools if os.path.exists(self.output_path(t))]
        if not outs:
            return
        cmd = [self.py, os.path.join(HERE, "compare.py"), *files, *outs,
               "--tol", str(self.a.tol), "--every", str(self.a.check_every)]
        log("comparing outputs: " + " ".join(cmd[2:]))
        done = subprocess.run(cmd, capture_output=True, text=True)
        text = (done.stdout + done.stderr).strip()
        log(text)
        self.raw["sizes"][f"{gib:g}"]["check"] = {"rc": done.returncode, "text": text}
        every = "every element" if self.a.check_every == 1 else f"every {self.a.check_every}th chunk of 4 Mi elements"
        self.report += [f"Agreement with a float64 reference ({every}; `bench/compare.py`, exit {done.returncode}):",
                        "", "```", text, "```", ""]
        for t in tools:
            remove(self.output_path(t))

    def phase_threads(self, gib, files, dirs):
        reps = self.reps(gib)
        runs = {}
        for r in range(reps):
            for threads in ((1, 2) if r % 2 == 0 else (2, 1)):
                runs.setdefault(threads, []).append(
                    self.measure("soup", files, dirs, threads=threads, suffix=f"-t{threads}", keep=True))
        a, b = self.output_path("soup", "-t1"), self.output_path("soup", "-t2")
        same = subprocess.run(["cmp", "-s", a, b]).returncode == 0 if os.path.exists(a) and os.path.exists(b) else None
        remove(a), remove(b)
        summary = {t: stats(rs) for t, rs in runs.items()}
        self.raw["sizes"].setdefault(f"{gib:g}", {})["threads"] = {"runs": runs, "summary": summary, "identical": same}
        lines = [f"### soup-merge threads, 3 × {gib:g} GiB {self.a.dtype}, warm, median of {reps}", "",
                 "| RAYON_NUM_THREADS | wall s | min–max s | CPU s | GB/s | peak RSS MiB |", "|---|---:|---:|---:|---:|---:|"]
        for t, s in sorted(summary.items()):
            lines.append(f"| {t} | {fmt(s['wall'])} | {fmt(s['min'])}–{fmt(s['max'])} | {fmt(s['cpu'], 2)} | {fmt(s['gbps'], 2)} | {fmt(s['rss'], 0)} |")
        if 1 in summary and 2 in summary and summary[2]["wall"]:
            lines.append(f"\nSpeed-up from 1 to 2 threads: {summary[1]['wall'] / summary[2]['wall']:.2f}×. ")
        lines.append(f"Outputs at 1 and 2 threads byte-identical (`cmp`): **{ {True: 'yes', False: 'NO', None: 'not checked (a run failed)'}[same] }**.\n")
        self.report += lines

    def phase_scaling(self, gib, files, dirs):
        reps = self.reps(gib)
        runs = self.alternate(list(FLOORS) + ["soup"], files, dirs, reps)
        summary = summarize(runs)
        ratios = floor_ratios(runs)
        self.raw["sizes"].setdefault(f"{gib:g}", {})["scaling"] = {"runs": runs, "summary": summary, "ratios": ratios}
        self.scaling_rows.append((gib, reps, summary, ratios))

    def reps(self, gib):
        return self.a.big_reps if self.a.big_gib and gib >= self.a.big_gib else self.a.reps

    def scaling_table(self):
        lines = ["### Scaling with input size (soup-merge against the floors)", "",
                 "| per input | reps | read s | write s | copy s | soup-merge s (min–max) | × tight floor (min–max) | × copy | soup s per GiB of input | soup CPU s | peak RSS MiB |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for gib, reps, s, r in self.scaling_rows:
            m = s.get("soup", {})
            per = m["wall"] / gib if m.get("wall") else None
            tight, copy = r.get("soup", {}).get("tight"), r.get("soup", {}).get("copy")
            lines.append(f"| {gib:g} GiB | {reps} | {fmt(s['floor-read'].get('wall'))} | {fmt(s['floor-write'].get('wall'))} | "
                         f"{fmt(s['floor-copy'].get('wall'))} | {fmt(m.get('wall'))} ({fmt(m.get('min'))}–{fmt(m.get('max'))}) | "
                         f"{span(tight)} | {fmt(copy and copy['median'], 2)} | {fmt(per)} | {fmt(m.get('cpu'), 2)} | {fmt(m.get('rss'), 0)} |")
        return "\n".join(lines) + "\n"

    def main(self):
        phases = self.a.phases.split(",")
        self.scaling_rows = []
        status = 0
        for gib in [float(s) for s in self.a.sizes.split(",")]:
            try:
                dirs, files = self.make_inputs(gib)
            except OutOfSpace as e:
                log(str(e))
                self.report.append(f"**Stopped before {gib:g} GiB**: {e}\n")
                status = 1
                break
            for p in phases:
                log(f"phase {p}, {gib:g} GiB")
                if p == "tools":
                    self.phase_tools(gib, files, dirs)
                elif p == "cold":
                    self.phase_tools(gib, files, dirs, cold=True)
                elif p == "threads":
                    self.phase_threads(gib, files, dirs)
                elif p == "scaling":
                    self.phase_scaling(gib, files, dirs)
                else:
                    sys.exit(f"error: unknown phase {p}; use tools, cold, threads or scaling")
            if not self.a.keep_inputs:
                shutil.rmtree(self.input_dir(gib))
        if self.scaling_rows:
            self.report.append(self.scaling_table())
        return self.write() or status

    def write(self):
        m = self.raw["machine"]
        m["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        head = [f"## Run of {self.raw['started']}", "",
                f"- Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']:.0f} GiB RAM, kernel {m['kernel']}, "
                f"data on {m['fs']}; load average {m['load_start']} at start, {m['load_end']} at end (other jobs share the machine)",
                f"- soup-merge: `{self.a.soup_merge}` ({m.get('soup_version', '?')}, sha256 {m.get('soup_sha', '?')}, "
                f"built {m.get('soup_built', '?')}); repository at {m['commit']}",
                f"- Command: `{self.a.command}`",
                f"- Peak RSS from {'`/usr/bin/time -v`' if self.runner.gnu_time else 'os.wait4 rusage'}; "
                "CPU s = user + system time (median), less sensitive than wall to other jobs on the machine; "
                "GB/s = (bytes read + bytes written) / wall / 1e9; tight floor = max(read floor, write floor) "
                "of the same repetition; × = wall / floor, per repetition, median (min–max); "
                f"settle {self.a.settle:g} s before each run.", ""]
        text = "\n".join(head + self.report)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        res = os.path.join(self.data, "results")
        os.makedirs(res, exist_ok=True)
        with open(os.path.join(res, f"{stamp}.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(res, f"{stamp}.json"), "w") as f:
            json.dump(self.raw, f, indent=1, default=str)
        print(text)
        log(f"wrote {res}/{stamp}.md and .json")
        failed = any(r["rc"] for size in self.raw["sizes"].values() for ph in size.values() if isinstance(ph, dict)
                     for rs in (ph.get("runs") or {}).values() for r in rs)
        checks_failed = any(size.get("check", {}).get("rc") for size in self.raw["sizes"].values())
        ident = [size["threads"]["identical"] for size in self.raw["sizes"].values() if "threads" in size]
        return 1 if failed or checks_failed or False in ident else 0


def stats(rs):
    ok = [r for r in rs if r["rc"] == 0]
    if not ok:
        return {"wall": None, "min": None, "max": None, "cpu": None, "rss": None, "gbps": None, "bytes": 0, "n": 0,
                "failed": len(rs)}
    wall = statistics.median(r["wall"] for r in ok)
    b = statistics.median(r["bytes"] for r in ok)
    return {"wall": wall, "min": min(r["wall"] for r in ok), "max": max(r["wall"] for r in ok),
            "cpu": statistics.median(r["cpu"] for r in ok),
            "rss": max(r["rss_mib"] for r in ok), "gbps": b / wall / 1e9, "bytes": b, "n": len(ok),
            "failed": len(rs) - len(ok)}


def summarize(runs):
    return {t: stats(rs) for t, rs in runs.items()}


def fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def floor_ratios(runs):
    """For every merger, its wall time over the tight floor (max of read and write), over read + write
    and over the copy floor, each taken within one repetition: min, median, max over repetitions.
    Also mergekit's time over soup-merge's, per repetition."""
    out = {}
    reps = min(len(rs) for rs in runs.values())
    for tool, rs in runs.items():
        if tool.startswith("floor"):
            continue
        series = {"tight": [], "sum": [], "copy": [], "mergekit_over_soup": []}
        for i in range(reps):
            fl = {f: runs[f][i] for f in FLOORS if f in runs and runs[f][i]["rc"] == 0}
            me = rs[i]
            if me["rc"]:
                continue
            if "floor-read" in fl and "floor-write" in fl:
                read, write = fl["floor-read"]["wall"], fl["floor-write"]["wall"]
                series["tight"].append(me["wall"] / max(read, write))
                series["sum"].append(me["wall"] / (read + write))
            if "floor-copy" in fl:
                series["copy"].append(me["wall"] / fl["floor-copy"]["wall"])
            if tool == "soup" and "mergekit" in runs and runs["mergekit"][i]["rc"] == 0:
                series["mergekit_over_soup"].append(runs["mergekit"][i]["wall"] / me["wall"])
        out[tool] = {k: {"min": min(v), "median": statistics.median(v), "max": max(v), "n": len(v)}
                     for k, v in series.items() if v}
    return out


def span(r, digits=2):
    """`median (min–max)` of a ratio series, or a dash."""
    if not r:
        return "—"
    if r["n"] == 1:
        return f"{r['median']:.{digits}f}"
    return f"{r['median']:.{digits}f} ({r['min']:.{digits}f}–{r['max']:.{digits}f})"


def tools_table(summary, ratios):
    soup = summary.get("soup", {}).get("wall")
    lines = ["| tool | wall s, median | min–max s | CPU s | GB/s | peak RSS MiB | × tight floor | × read + write | × copy | soup-merge faster by |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t, s in summary.items():
        if s["wall"] is None:
            lines.append(f"| {TOOL_TITLES.get(t, t)} | failed ({s['failed']} runs) | | | | | | | | |")
            continue
        r = ratios.get(t, {})
        faster = s["wall"] / soup if soup and not t.startswith("floor") and t != "soup" else None
        note = f" ({s['failed']} failed)" if s["failed"] else ""
        lines.append(f"| {TOOL_TITLES.get(t, t)}{note} | {fmt(s['wall'])} | {fmt(s['min'])}–{fmt(s['max'])} | {fmt(s['cpu'], 2)} | {fmt(s['gbps'], 2)} | "
                     f"{fmt(s['rss'], 0)} | {span(r.get('tight'))} | {span(r.get('sum'))} | {span(r.get('copy'))} | "
                     f"{'—' if faster is None else f'{faster:.1f}×'} |")
    return "\n".join(lines)


def ratio_lines(ratios):
    """The headline sentences: soup-merge against the tight floor and against mergekit."""
    soup = ratios.get("soup", {})
    lines = []
    if soup.get("tight"):
        t = soup["tight"]
        lines.append(f"soup-merge / tight floor max(read, write), per repetition: median {t['median']:.2f}×, "
                     f"min {t['min']:.2f}×, max {t['max']:.2f}× ({t['n']} repetitions).")
    if soup.get("mergekit_over_soup"):
        m = soup["mergekit_over_soup"]
        lines.append(f"mergekit / soup-merge, per repetition: median {m['median']:.1f}×, min {m['min']:.1f}×, "
                     f"max {m['max']:.1f}×.")
    return " ".join(lines)


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine(data):
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    fs = subprocess.run(["df", "-T", data], capture_output=True, text=True).stdout.splitlines()[-1].split()
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "src", "Cargo.toml"],
                           capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem, "kernel": platform.release(),
            "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "fs": f"{fs[1]} ({fs[0]})" if len(fs) > 1 else "?",
            "commit": (commit or "none") + (" + uncommitted src changes" if dirty else "")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--sizes", default="1", help="GiB per input checkpoint, comma-separated (e.g. 1,2,4,8)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--phases", default="tools,threads", help="tools, cold, threads, scaling (comma-separated)")
    ap.add_argument("--tools", default="soup,mergekit,naive,numpy", help="which tools the tools phase times")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--big-gib", type=float, default=0, help="sizes at or above this get --big-reps repetitions")
    ap.add_argument("--big-reps", type=int, default=1)
    ap.add_argument("--data", default=os.environ.get("BENCH_DATA", "/work/bench-data"), help="scratch directory, outside the repo")
    ap.add_argument("--keep-inputs", action="store_true", help="don't delete the generated checkpoints afterwards")
    ap.add_argument("--no-warm", action="store_true", help="don't pre-read the inputs before each timed run")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds to wait before each timed run, so memory freed by the previous one is back "
                         "with the hypervisor for every tool alike (see BENCHMARKS.md, 'This machine')")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the Python tools and the checkpoint generator")
    ap.add_argument("--soup-merge", default=os.path.join(REPO, "target", "release", "soup-merge"))
    ap.add_argument("--mergekit-yaml", default=os.path.join(os.path.dirname(sys.executable), "mergekit-yaml"))
    ap.add_argument("--hidden", type=int, help="hidden size for tiny smoke checkpoints (make_checkpoint --hidden)")
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--tol", type=float, default=1.0, help="compare.py tolerance, in units of spacing at S")
    ap.add_argument("--check-every", type=int, default=1, help="compare.py --every")
    ap.add_argument("--command", default=" ".join(["python3", "bench/bench.py", *sys.argv[1:]]),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.soup_merge = os.path.abspath(a.soup_merge)
    if not os.access(a.soup_merge, os.X_OK):
        sys.exit(f"error: {a.soup_merge} is not an executable; run `cargo build --release --bin soup-merge` or pass --soup-merge")
    if os.path.commonpath([os.path.abspath(a.data), REPO]) == REPO:
        sys.exit(f"error: --data {a.data} is inside the repository; use a scratch directory outside it")
    if "mergekit" in a.tools.split(",") and "tools" in a.phases and not os.access(a.mergekit_yaml, os.X_OK):
        sys.exit(f"error: {a.mergekit_yaml} not found; install mergekit (bench/run.sh does) or drop it from --tools")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: terminated"))
    bench = Bench(a)
    version = subprocess.run([a.soup_merge, "--version"], capture_output=True, text=True)
    bench.raw["machine"]["soup_version"] = version.stdout.strip() or "no --version"
    with open(a.soup_merge, "rb") as f:
        bench.raw["machine"]["soup_sha"] = hashlib.sha256(f.read()).hexdigest()[:12]
    bench.raw["machine"]["soup_built"] = datetime.datetime.fromtimestamp(
        os.path.getmtime(a.soup_merge), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sys.exit(bench.main())


if __name__ == "__main__":
    main()
