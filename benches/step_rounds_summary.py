#!/usr/bin/env python3
"""Summarises the JSON lines of benches/step_rounds.sh as a Markdown table: per step and
contestant, the median of the run medians (range), peak RSS, and the per-round ratios of the
step time to PyTorch f32 and to PyTorch bf16 autocast (median, range).

    benches/step_rounds.sh 3 > rounds.jsonl; python3 benches/step_rounds_summary.py rounds.jsonl
"""
import json
import statistics
import sys


def main():
    runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
    failed = [r for r in runs if r.get("failed")]
    runs = [r for r in runs if not r.get("failed")]
    t = {(r["step"], r["contestant"], r["round"]): r["report"] for r in runs}
    steps = sorted({r["step"] for r in runs})
    names = list(dict.fromkeys(r["contestant"] for r in runs))
    rounds = sorted({r["round"] for r in runs})
    print("| step | contestant | median of run medians (range) | / PyTorch f32, per round: median (range) "
          "| / PyTorch bf16, per round: median (range) | peak RSS | products / kernels |")
    print("|---|---|---|---|---|---|---|")
    for s in steps:
        for n in names:
            rs = [t[(s, n, k)] for k in rounds if (s, n, k) in t]
            if not rs:
                continue
            ms = [x["median_ms"] for x in rs]

            def ratio(ref):
                v = [t[(s, n, k)]["median_ms"] / t[(s, ref, k)]["median_ms"]
                     for k in rounds if (s, n, k) in t and (s, ref, k) in t]
                if not v:
                    return ""
                return f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"

            rss = [x["peak_rss_mib"] for x in rs]
            what = rs[0].get("products") or (
                f"{rs[0].get('dtype')} {rs[0].get('cpu_capability', '')} mkldnn_bf16={rs[0].get('mkldnn_bf16')}"
                if "dtype" in rs[0] else "")
            if what.startswith("f32 products: no bf16 kernel"):
                what = "bf16 asked, f32 products (no bf16 kernel here)"
            gemm = rs[0].get("cpu_gemm", "")
            if gemm:
                # "OpenBLAS 0.3.21 ... Zen MAX_THREADS=64 (libopenblas.so.0)" -> "OpenBLAS 0.3.21, Zen"
                words = gemm.split()
                core = [w for i, w in enumerate(words[:-1]) if words[i + 1].startswith("MAX_THREADS")]
                if gemm.startswith("OpenBLAS") and len(words) > 1:
                    gemm = f"OpenBLAS {words[1]}" + (f", {core[0]} kernels" if core else "")
                what = f"{what}; {gemm}"
            print(f"| {s} | {n} | {statistics.median(ms):.0f} ms ({min(ms):.0f}-{max(ms):.0f}) | "
                  f"{ratio('pytorch-f32')} | {ratio('pytorch-bf16')} | "
                  f"{min(rss):.0f}-{max(rss):.0f} MiB | {what} |")
    ats = [r["at"] for r in runs if "at" in r]
    loads = [float(r["load"]) for r in runs if "load" in r]
    if ats:
        print(f"\n{len(rounds)} rounds, {ats[0]}-{ats[-1]} UTC, load average {min(loads):.1f}-{max(loads):.1f}")
    for f in failed:
        print(f"failed: {f}")


if __name__ == "__main__":
    main()
