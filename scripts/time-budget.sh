#!/usr/bin/env bash
# Time budgets of the VTAB-1K pipelines from measured rates, so that no hour in docs/vtab.md
# or in the pipelines' `time:` limits is typed by hand.
#
#   scripts/time-budget.sh [RATES.jsonl ...]
#
# RATES: `idat-pipe bench --json` lines (e.g. `idat-pipe bench --device cuda --batch 64
# --json` on the GPU, which times the iDAT and AT steps and their evaluations; or the
# bench_rs_f32_b64.jsonl that scripts/gpu-check.sh leaves in its $OUT). Without arguments the
# rates are the f32 batch-64 rows of the newest GPU check in docs/benchmarks.md (the section
# scripts/gpu-check.sh wrote), turned back into bench reports.
#
# Writes:
#   docs/time-budget-rates.jsonl  the rates used (tests check the pipelines' limits against it);
#   docs/vtab.md                  the section between <!-- time-budget:begin/end --> (vtab.yaml);
#   pipelines/vtab.yaml, pipelines/vtab-adapters.yaml
#                                 `time:` of every training and evaluation stage: its longest
#                                 instance x MARGIN (default 1.5), rounded up to 15 minutes.
# Nothing is written unless the rates budget every training and evaluation instance of both
# pipelines (evaluation-only rates, or rates of another image size, are refused).
# BIN: the idat-pipe to run (default target/release/idat-pipe, else target/debug/idat-pipe).
set -euo pipefail
cd "$(dirname "$0")/.."
MARGIN=${MARGIN:-1.5}
BIN=${BIN:-}
if [ -z "$BIN" ]; then
  for b in target/release/idat-pipe target/debug/idat-pipe; do
    [ -x "$b" ] && { BIN=$b; break; }
  done
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "time-budget.sh: build idat-pipe first (cargo build)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rates=docs/time-budget-rates.jsonl
pipelines=(pipelines/vtab.yaml pipelines/vtab-adapters.yaml)

if [ $# -gt 0 ]; then
  cat "$@" | grep '^{' >"$tmp/rates.jsonl" || { echo "time-budget.sh: no bench report in $*" >&2; exit 2; }
  origin="$* ($(date -u +%Y-%m-%d))"
else
  # The GPU check's rows: "| idat-pipe idat cuda f32 batch 64 | 117.3 img/s, 545.8 ms/step, ..."
  python3 - docs/benchmarks.md >"$tmp/rates.jsonl" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
sec = text.split("<!-- gpu-check:begin -->")[1].split("<!-- gpu-check:end -->")[0]
card = re.search(r"; (NVIDIA [^(;]+?) \(driver", sec)
commit = re.search(r"commit\s+`([0-9a-f]+)`", sec)
cores = re.search(r"(\d+) CPU cores", sec)
device = "%s (scripts/gpu-check.sh, idat-pipe %s)" % (
    card.group(1) if card else "GPU", commit.group(1) if commit else "?")
rows = re.findall(r"^\| idat-pipe (\w+) cuda (f32) batch 64 \| ([0-9.]+) img/s, ([0-9.]+) ms/step", sec, re.M)
if not rows:
    sys.exit("time-budget.sh: no `idat-pipe ... cuda f32 batch 64` row in docs/benchmarks.md's gpu-check section")
for kind, prec, ips, ms in rows:
    print(json.dumps({"kind": kind, "device": device, "threads": int(cores.group(1)) if cores else 0,
                      "batch": 64, "img_size": 224, "steps": 10, "median_ms": float(ms),
                      "min_ms": float(ms), "images_per_s": float(ips), "peak_rss_mib": None,
                      "trainable": 0, "precision": prec, "device_mem_mib": None, "cpu_gemm": "",
                      "full_last_block": False, "products": ""}))
EOF
  origin="the f32 batch-64 rows of docs/benchmarks.md's GPU check"
fi

# First every pipeline's budget, refused as a whole if an instance gets none.
for p in "${pipelines[@]}"; do
  j="$tmp/$(basename "$p" .yaml).json"
  "$BIN" budget "$p" --rates "$tmp/rates.jsonl" --margin "$MARGIN" --json >"$j"
  python3 - "$j" "$p" <<'EOF'
import json, sys
b = json.load(open(sys.argv[1]))
if b["skipped"] or not b["instances"]:
    for i, why in b["skipped"][:5]:
        print("time-budget.sh: %s: `%s` not budgeted: %s" % (sys.argv[2], i, why), file=sys.stderr)
    sys.exit("time-budget.sh: these rates do not budget every instance of %s; nothing written" % sys.argv[2])
EOF
done

# Then each budgeted stage's one-line `resources: {...}` gets the suggested `time:`.
for p in "${pipelines[@]}"; do
  python3 - "$tmp/$(basename "$p" .yaml).json" "$p" <<'EOF'
import json, re, sys
budget = json.load(open(sys.argv[1]))
path = sys.argv[2]
lines = open(path).read().split("\n")
for st in budget["stages"]:
    head = "  %s:" % st["stage"]
    try:
        i = lines.index(head)
    except ValueError:
        sys.exit("time-budget.sh: no stage line `%s` in %s" % (head, path))
    j = i + 1
    while j < len(lines) and (lines[j].startswith("    ") or lines[j] == ""):
        m = re.match(r"^(    resources: \{)(.*)\}(.*)$", lines[j])
        if m:
            fields = [f.strip() for f in m.group(2).split(",") if f.strip() and not f.strip().startswith("time:")]
            fields.append("time: %s" % st["suggested"])
            lines[j] = "%s%s}%s" % (m.group(1), ", ".join(fields), m.group(3))
            break
        j += 1
    else:
        sys.exit("time-budget.sh: stage `%s` of %s has no one-line `resources: {...}`" % (st["stage"], path))
open(path, "w").write("\n".join(lines))
EOF
done

cp "$tmp/rates.jsonl" "$rates"
# The report of vtab.yaml as it is now (its limits written).
"$BIN" budget pipelines/vtab.yaml --rates "$rates" --margin "$MARGIN" >"$tmp/budget.md"
{
  echo "<!-- time-budget:begin -->"
  echo "<!-- written by scripts/time-budget.sh; do not edit by hand -->"
  echo "\`idat-pipe budget pipelines/vtab.yaml --rates $rates\` ($(date -u +%Y-%m-%d), commit"
  echo "\`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\`), rates from $origin; limits: longest instance x $MARGIN."
  echo
  cat "$tmp/budget.md"
  echo "<!-- time-budget:end -->"
} >"$tmp/section.md"
scripts/splice.sh docs/vtab.md time-budget "$tmp/section.md"
for p in "${pipelines[@]}"; do
  "$BIN" budget "$p" --rates "$rates" --margin "$MARGIN" --check >/dev/null
done
echo "time-budget.sh: wrote $rates, docs/vtab.md (time-budget) and the time limits of ${pipelines[*]}"
