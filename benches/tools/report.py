#!/usr/bin/env python3
"""scripts/bench's analysis steps, each printing JSON (or, for `table`, the Markdown result).

  report.py size --lib LIB --strip-dir DIR --bin EXAMPLE:VARIANT=UNSTRIPPED...
  report.py callgrind --dir DIR --reads N
  report.py massif --reads N --massif NAME=FILE...
  report.py table --dir build/bench --seconds S

Size attribution: every defined symbol of the unstripped binary (`nm -S`, demangled by
c++filt) is charged to a group: Mbed TLS C (symbols defined by the `*.c.o` members of
libestuary.a, i.e. the mbedtls-sys crate's C objects), the Rust crate named first in its
path (`estuary::...`, `<alloc::vec::Vec<..>>::...`), std (std/core/alloc and the crates
std itself links: backtrace, unwinding, compiler builtins), or the C example and C runtime.
After LTO, code inlined into a function counts for the crate of that function.

CPU split: callgrind collected only inside the benchmark's `bench_client_*` calls; an
instruction is cryptography when it runs inside a call from the client's own non-crypto
code (estuary's other modules) into crypto code (mbedtls_*, the mbedtls:: Rust wrapper,
estuary::crypto, estuary::dtls), counted once at that boundary with callgrind's inclusive
cost of the call (memcpy, malloc etc. called from inside count as cryptography).
"""

import argparse
import collections
import glob
import json
import os
import platform
import re
import subprocess
import sys
import time

STD_CRATES = {
    "std", "core", "alloc", "panic_unwind", "panic_abort", "unwind", "compiler_builtins",
    "gimli", "addr2line", "miniz_oxide", "adler", "adler2", "rustc_demangle", "object",
    "std_detect", "hashbrown", "memchr", "cfg_if", "__rust", "rust_eh_personality",
}


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def c_objects_symbols(lib):
    """Symbols defined by the C objects (*.c.o) of the static library."""
    out = run("nm", "-A", "--defined-only", lib)
    syms = set()
    for line in out.splitlines():
        # lib.a:member.o:ADDR T name
        parts = line.split()
        if len(parts) < 3:
            continue
        where = parts[0]
        member = where.split(":")[1] if where.count(":") >= 2 else ""
        if member.endswith(".c.o"):
            syms.add(parts[-1])
    return syms


def crate_of(demangled):
    name = demangled.lstrip("<&*")
    name = re.sub(r"^(dyn |impl |mut |const )", "", name)
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(\[[0-9a-f]+\])?::", name)
    if m:
        return m.group(1)
    # `<f64 as num_traits::Num>::...`: a primitive type's impl belongs to the trait's crate;
    # `<str>::to_lowercase`: inherent methods of primitives are core/alloc.
    m = re.search(r" as &?(?:dyn )?([A-Za-z_][A-Za-z0-9_]*)(\[[0-9a-f]+\])?::", demangled)
    if m:
        return m.group(1)
    return "std" if demangled.startswith("<") else None


def attribute(binary, c_syms):
    raw = run("nm", "--defined-only", "-S", "--size-sort", binary)
    entries = []
    for line in raw.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        _, size, kind, name = parts
        entries.append((int(size, 16), kind, name))
    demangled = run_stdin(["c++filt"], "\n".join(e[2] for e in entries)).splitlines()
    groups = collections.Counter()
    crates = collections.Counter()
    for (size, kind, name), dem in zip(entries, demangled):
        if name in c_syms:
            group = "Mbed TLS (C, mbedtls-sys)"
            crate = "mbedtls-sys (C)"
        else:
            crate = crate_of(dem)
            if crate is None:
                if name.startswith("estuary_"):
                    crate = "estuary"
                elif name.startswith(("__rust", "rust_", "__rdl", "__rg")):
                    crate = "std"
                elif name.startswith("forward_mbedtls"):
                    crate = "mbedtls"
                else:
                    crate = "(C example, C runtime)"
            if crate == "estuary":
                group = "Rust core (estuary)"
            elif crate in STD_CRATES and re.search(r"\bestuary(\[[0-9a-f]+\])?::", dem):
                # Vec, HashMap, drop_in_place... monomorphised for our types.
                group = "std generics instantiated for estuary types"
                crate = "std<estuary>"
            elif crate in STD_CRATES:
                group = "std (std, core, alloc, unwinding, backtrace)"
                crate = "std"
            elif crate == "(C example, C runtime)":
                group = crate
            else:
                group = "other Rust crates"
        groups[group] += size
        crates[crate] += size
    return groups, crates


def run_stdin(cmd, text):
    return subprocess.run(cmd, input=text, check=True, capture_output=True, text=True).stdout


def sections(binary):
    """Sizes of the interesting sections of an ELF file, grouped."""
    groups = collections.Counter()
    for line in run("readelf", "-S", "-W", binary).splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)", line)
        if not m:
            continue
        name, size = m.group(1), int(m.group(2), 16)
        if name in (".eh_frame", ".eh_frame_hdr", ".gcc_except_table"):
            groups["unwind tables (.eh_frame, .eh_frame_hdr, .gcc_except_table)"] += size
        elif name.startswith(".rela"):
            groups["relocations (.rela.*, PIE)"] += size
        elif name in (".text", ".rodata", ".data", ".data.rel.ro", ".bss"):
            groups[name] += size
    return dict(groups)


VARIANTS = {
    "small": "default link",
    "small-gc": "-Wl,--gc-sections",
    "abort": "panic=abort",
    "abort-gc": "panic=abort, -Wl,--gc-sections",
}


def cmd_size(a):
    c_syms = c_objects_symbols(a.lib)
    os.makedirs(a.strip_dir, exist_ok=True)
    result = {}
    for spec in a.bin:
        key, path = spec.split("=", 1)
        name, variant = key.split(":")
        stripped = os.path.join(a.strip_dir, f"{name}.{variant}")
        run("strip", "-o", stripped, path)
        text, data, bss = map(int, run("size", stripped).splitlines()[1].split()[:3])
        entry = {
            "stripped_bytes": os.path.getsize(stripped),
            "text": text,
            "data": data,
            "bss": bss,
            "sections": sections(stripped),
        }
        if not variant.startswith("abort"):
            groups, crates = attribute(path, c_syms)
            entry["groups"] = dict(groups.most_common())
            entry["crates"] = dict(crates.most_common(12))
        result.setdefault(name, {})[variant] = entry
    json.dump(result, sys.stdout, indent=1)


# ---- callgrind ---------------------------------------------------------------------------

CRYPTO = re.compile(r"^(mbedtls_|forward_mbedtls|<?mbedtls(\[[0-9a-f]+\])?::|<?estuary(\[[0-9a-f]+\])?::(crypto|dtls)::)")


CLIENT_SIDE = re.compile(r"^<?(estuary(\[[0-9a-f]+\])?::|client_flow::)")


def is_crypto(name):
    return bool(CRYPTO.match(name.lstrip("<&")))


def is_boundary_caller(name):
    """Client code outside cryptography: estuary's other modules and the benchmark's
    `bench_client_*` calls. (Library code in between, e.g. a `drop_in_place` called from
    Mbed TLS's Rust wrapper, is not a boundary: it may itself run inside cryptography.)"""
    return bool(CLIENT_SIDE.match(name)) and not is_crypto(name)


def parse_callgrind(path):
    """(total Ir, crypto Ir) of one callgrind output."""
    names = {}
    total = 0
    crypto = 0
    fn = None
    cfn = None
    in_call = False
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        if line.startswith(("fn=", "cfn=")):
            key, val = line.split("=", 1)
            m = re.match(r"\((\d+)\)(?: (.*))?", val)
            if m:
                if m.group(2) is not None:
                    names[m.group(1)] = m.group(2)
                name = names.get(m.group(1), "?")
            else:
                name = val
            if key == "fn":
                fn = name
            else:
                cfn = name
            continue
        if line.startswith("calls="):
            in_call = True
            continue
        if line[0].isdigit() or line[0] in "+-*":
            parts = line.split()
            cost = int(parts[1]) if len(parts) > 1 else 0
            if in_call:
                if is_crypto(cfn) and is_boundary_caller(fn):
                    crypto += cost
                in_call = False
            else:
                total += cost
            continue
        if line.startswith("totals:") or line.startswith("summary:"):
            continue
    return total, crypto


def parts_of(directory, name):
    """The dumps of one run, by part number: 1 flow, 2 reads, 3 notifications."""
    files = glob.glob(os.path.join(directory, f"{name}.*"))
    parts = {}
    for f in files:
        m = re.search(r"\.(\d+)\.(\d+)$", f)
        if m:
            parts[int(m.group(2))] = f
    return parts


def cmd_callgrind(a):
    runs = sorted({re.sub(r"\..*", "", os.path.basename(f)) for f in glob.glob(os.path.join(a.dir, "*.*"))})
    out = {"reads": a.reads, "runs": {}}
    for name in runs:
        parts = parts_of(a.dir, name)
        if not parts:
            continue
        log = open(os.path.join(a.dir, f"{name}.log")).read()
        m = re.search(r"notifications=(\d+)", log)
        entry = {"notification_count": int(m.group(1)) if m else 0}
        for num, label in [(1, "flow"), (2, "reads"), (3, "notifications")]:
            if num in parts:
                total, crypto = parse_callgrind(parts[num])
                entry[label] = {"total": total, "crypto": crypto}
        out["runs"][name] = entry
    json.dump(out, sys.stdout, indent=1)


# ---- massif ------------------------------------------------------------------------------

def cmd_massif(a):
    out = {"reads": a.reads, "examples": {}}
    for spec in a.massif:
        name, path = spec.split("=", 1)
        snaps = []
        cur = {}
        for line in open(path):
            line = line.strip()
            if line.startswith("snapshot="):
                if cur:
                    snaps.append(cur)
                cur = {}
            elif "=" in line and line.split("=")[0] in ("mem_heap_B", "mem_heap_extra_B", "mem_stacks_B"):
                k, v = line.split("=")
                cur[k] = int(v)
        if cur:
            snaps.append(cur)
        peak = max(snaps, key=lambda s: s.get("mem_heap_B", 0) + s.get("mem_heap_extra_B", 0))
        out["examples"][name] = {
            "peak_heap": peak.get("mem_heap_B", 0),
            "peak_heap_extra": peak.get("mem_heap_extra_B", 0),
            "final_heap": snaps[-1].get("mem_heap_B", 0) if snaps else 0,
            "snapshots": len(snaps),
        }
    json.dump(out, sys.stdout, indent=1)


# ---- the table ---------------------------------------------------------------------------

def kib(n):
    return f"{n / 1024:.1f} KiB"


def num(n):
    return f"{n:,}".replace(",", " ")


def machine():
    cpu = ""
    try:
        for line in run("lscpu").splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
        cores = os.cpu_count()
    except (OSError, subprocess.CalledProcessError):
        cores = os.cpu_count()
    rustc = run("rustc", "--version").strip()
    cc = run("cc", "--version").splitlines()[0]
    vg = run("valgrind", "--version").strip()
    return f"{cpu or platform.processor()}, {cores} cores, {platform.system()} {platform.release()}; {rustc}; {cc}; {vg}"


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def cmd_table(a):
    d = a.dir
    load = lambda f: json.load(open(os.path.join(d, f)))
    size = load("size.json")
    flow = load("client_flow.json")
    cpu = load("cpu.json")
    massif = load("massif.json") if os.path.exists(os.path.join(d, "massif.json")) else {"examples": {}}
    L = []
    L.append(f"# Estuary benchmark results\n")
    L.append(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `scripts/bench` ({a.seconds} s), "
             f"commit {run('git', 'rev-parse', '--short', 'HEAD').strip()}.  ")
    L.append(f"Machine: {machine()}.\n")

    L.append("## Size (stripped, release-small: opt-level z, LTO, 1 CGU; C code -Os)\n")
    L.append("| example | link | file | text | data | bss | with panic=abort | saved by abort |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, vs in size.items():
        for v, ab in (("small", "abort"), ("small-gc", "abort-gc")):
            if v not in vs:
                continue
            e = vs[v]
            a_ = vs.get(ab)
            saved = (f"{num(a_['stripped_bytes'])} B | {num(e['stripped_bytes'] - a_['stripped_bytes'])} B "
                     f"({100 * (e['stripped_bytes'] - a_['stripped_bytes']) / e['stripped_bytes']:.1f} %)") if a_ else "— | —"
            L.append(f"| {name} | {VARIANTS[v]} | {num(e['stripped_bytes'])} B | {num(e['text'])} | {num(e['data'])} | "
                     f"{num(e['bss'])} | {saved} |")
    for name, vs in size.items():
        cols = [v for v in ("small", "small-gc") if v in vs]
        L.append(f"\nAttribution of `{name}` (bytes; symbol sizes from `nm -S`, sections from `readelf -S`):\n")
        L.append("| part | " + " | ".join(VARIANTS[c] for c in cols) + " |")
        L.append("|---|" + "---:|" * len(cols))
        groups = []
        for c in cols:
            for g in vs[c]["groups"]:
                if g not in groups:
                    groups.append(g)
        for g in groups:
            L.append(f"| {g} | " + " | ".join(
                f"{num(vs[c]['groups'].get(g, 0))} ({100 * vs[c]['groups'].get(g, 0) / vs[c]['stripped_bytes']:.0f} %)"
                for c in cols) + " |")
        L.append("| not in symbols (unwind tables, relocations, string literals, headers) | " + " | ".join(
            num(vs[c]["stripped_bytes"] - sum(vs[c]["groups"].values())) for c in cols) + " |")
        L.append("| *of which: unwind tables (.eh_frame, .eh_frame_hdr, .gcc_except_table)* | " + " | ".join(
            num(vs[c]["sections"].get("unwind tables (.eh_frame, .eh_frame_hdr, .gcc_except_table)", 0)) for c in cols) + " |")
        L.append("| *of which: relocations (PIE)* | " + " | ".join(
            num(vs[c]["sections"].get("relocations (.rela.*, PIE)", 0)) for c in cols) + " |")
        for c in cols:
            L.append(f"\nLargest crates ({VARIANTS[c]}): " + ", ".join(f"{k} {kib(b)}" for k, b in vs[c]["crates"].items()) + ".")

    f = flow["flow"]
    s = flow["steady"]
    L.append("\n## Memory\n")
    L.append("Rust heap of the client (counting allocator, `benches/client_flow.rs`; Mbed TLS "
             "allocates with C `calloc` and is not in these figures):\n")
    L.append("| phase | peak heap | allocations | live after |")
    L.append("|---|---:|---:|---:|")
    L.append(f"| bootstrap + EST enrollment + registration | {num(f['heap_peak'])} B | {num(f['allocs'])} "
             f"({num(f['alloc_bytes'])} B) | {num(f['live_after'])} B |")
    L.append(f"| {s['reads']} Reads of /3/0 | {num(s['read_peak'])} B | {s['read_allocs'] / s['reads']:.1f} per Read | "
             f"{num(s['live_after_reads'])} B ({num(s['live_after_2x_reads'])} B after {2 * s['reads']}) |")
    n = max(s["notifications"], 1)
    L.append(f"| {s['notifications']} notifications (Observe, 1 s apart) | {num(s['notify_peak'])} B | "
             f"{s['notify_allocs'] / n:.1f} per notification | {num(s['live_after_notifications'])} B |")
    if massif["examples"]:
        L.append(f"\nWhole process under valgrind massif (C example, Rust + Mbed TLS + C heap; bootstrap, EST, "
                 f"registration, {massif['reads']} Reads of /3/0, de-registration against the test server):\n")
        L.append("| example | peak heap | + allocator overhead |")
        L.append("|---|---:|---:|")
        for name, m in massif["examples"].items():
            L.append(f"| {name} | {num(m['peak_heap'])} B | {num(m['peak_heap_extra'])} B |")

    L.append("\n## CPU (instructions, valgrind callgrind; client calls only)\n")
    runs = cpu["runs"]
    base = [v for k, v in runs.items() if k.startswith("base-run")]
    reads = cpu["reads"]
    if base:
        ft = [r["flow"]["total"] for r in base]
        fc = [r["flow"]["crypto"] for r in base]
        rt = [r["reads"]["total"] for r in base]
        rc = [r["reads"]["crypto"] for r in base]
        nt = [r["notifications"]["total"] for r in base]
        ncr = [r["notifications"]["crypto"] for r in base]
        nn = max(base[0]["notification_count"], 1)
        L.append(f"Median of {len(base)} runs (the runs differ by at most "
                 f"{max(ft) - min(ft)} instructions in the flow).\n")
        L.append("| | instructions | cryptography | everything else |")
        L.append("|---|---:|---:|---:|")
        L.append(f"| bootstrap + EST + registration | {num(median(ft))} | {num(median(fc))} ({100 * median(fc) / median(ft):.0f} %) | {num(median(ft) - median(fc))} |")
        L.append(f"| per Read of /3/0 (mean of {reads}) | {num(median(rt) // reads)} | {num(median(rc) // reads)} ({100 * median(rc) / max(median(rt), 1):.0f} %) | {num((median(rt) - median(rc)) // reads)} |")
        L.append(f"| per notification (mean of {nn}) | {num(median(nt) // nn)} | {num(median(ncr) // nn)} | {num((median(nt) - median(ncr)) // nn)} |")

    L.append(f"\n## Wire (simulator: first flow, then {flow['wire_days']} days with a 1 h lifetime and 30-day certificates)\n")
    L.append("DTLS 1.2 (PSK to the Bootstrap-Server, ECDHE-ECDSA with the EST certificate to the management "
             "server, AES-128-CCM-8). Bytes are UDP payloads. Lower bound: bytes that must be carried whatever "
             "the protocol (Bootstrap-Write payloads; CSR, issued and CA certificates as DER; Register body; "
             "Read/notification payloads).\n")
    L.append("| exchange | count | datagrams ↑/↓ (each) | bytes ↑/↓ (each) | lower bound (each) | ratio |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for t in flow["wire"]:
        c = max(t["count"], 1)
        total = t["up_bytes"] + t["down_bytes"]
        lb = t["lower_bound"]
        ratio = f"{total / lb:.1f}×" if lb else "—"
        L.append(f"| {t['label']} | {t['count']} | {t['up_datagrams'] / c:.1f} / {t['down_datagrams'] / c:.1f} | "
                 f"{num(round(t['up_bytes'] / c))} / {num(round(t['down_bytes'] / c))} | {num(round(lb / c))} | {ratio} |")

    L.append("\n## Growth\n")
    L.append("| instances of a custom object | EST CA chain | client heap peak | allocations | live after | "
             "flow bytes | registration bytes | Read of the object | flow instructions |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    cg = {(1, 1): base and median([r["flow"]["total"] for r in base]),
          (10, 1): runs.get("instances10", {}).get("flow", {}).get("total"),
          (100, 1): runs.get("instances100", {}).get("flow", {}).get("total"),
          (1, 2): runs.get("chain2", {}).get("flow", {}).get("total"),
          (1, 3): runs.get("chain3", {}).get("flow", {}).get("total")}
    notes = []
    for g in flow["growth"]:
        label_i = str(g["instances"]) + (f" (datagrams ≤ {g['out_buffer']} B)" if g.get("out_buffer") else "")
        if "failed" in g:
            notes.append(g["failed"])
            L.append(f"| {label_i} | {g['chain']} | fails ({len(notes)}) | | | | | | |")
            continue
        key = (g["instances"], g["chain"])
        ins = cg.get(key) if (g.get("out_buffer") is not None) == (key == (100, 1)) else None
        L.append(f"| {label_i} | {g['chain']} | {num(g['heap_peak'])} B | {num(g['allocs'])} | {num(g['live'])} B | "
                 f"{num(g['flow_bytes'])} | {num(g['registration_bytes'])} | {num(g['object_read_bytes'])} | "
                 f"{num(ins) if ins else '—'} |")
    if notes:
        L.append("")
        L.extend(f"({i}) {n}  " for i, n in enumerate(notes, 1))
    print("\n".join(L))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("size")
    s.add_argument("--lib", required=True)
    s.add_argument("--strip-dir", required=True)
    s.add_argument("--bin", action="append", required=True)
    c = sub.add_parser("callgrind")
    c.add_argument("--dir", required=True)
    c.add_argument("--reads", type=int, required=True)
    m = sub.add_parser("massif")
    m.add_argument("--reads", type=int, required=True)
    m.add_argument("--massif", action="append", default=[])
    t = sub.add_parser("table")
    t.add_argument("--dir", required=True)
    t.add_argument("--seconds", type=int, default=0)
    a = p.parse_args()
    {"size": cmd_size, "callgrind": cmd_callgrind, "massif": cmd_massif, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
