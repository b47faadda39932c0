#!/usr/bin/env bash
# Time budgets of pipelines/vtab.yaml from measured rates, so that no hour in docs/vtab.md or
# vtab.yaml's `time:` limits is typed by hand.
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
#   docs/time-budget-rates.jsonl  the rates used (tests check vtab.yaml's limits against it);
#   docs/vtab.md                  the section between <!-- time-budget:begin/end -->;
#   pipelines/vtab.yaml           `time:` of every training and evaluation stage: its longest
#                                 instance x MARGIN (default 1.5), rounded up to 15 minutes.
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

"$BIN" budget pipelines/vtab.yaml --rates "$tmp/rates.jsonl" --margin "$MARGIN" --json >"$tmp/budget.json"

# vtab.yaml: each budgeted stage's `resources:` line gets the suggested `time:`.
python3 - "$tmp/budget.json" pipelines/vtab.yaml <<'EOF'
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

cp "$tmp/rates.jsonl" "$rates"
# The report of the pipeline as it is now (its limits written).
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
"$BIN" budget pipelines/vtab.yaml --rates "$rates" --margin "$MARGIN" --check >/dev/null
echo "time-budget.sh: wrote $rates, docs/vtab.md (time-budget) and the time limits of pipelines/vtab.yaml"
