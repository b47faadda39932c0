#!/usr/bin/env bash
# GPU check for the CUDA build of idat-pipe (see docs/gpu.md). Run on the GPU machine (no Rust,
# no internet; Python with torch + timm + safetensors) from the repository root, with the binary
# built here by scripts/cuda-build.sh carried over:
#
#   scripts/gpu-check.sh                    # BIN=target/cuda/release/idat-pipe PYTHON=python3
#
# (a) parity: `idat-pipe infer --device cuda` on crates/nn/tests/fixtures/timm/*.safetensors vs timm on the
#     same GPU (max relative error), (b) `idat-pipe bench --device cuda`, iDAT + AT steps at full
#     size (ViT-S/16 + ViT-B/16, 224) with batch 64 and 8, (c) benches/pytorch_step.py on the same
#     card, fp32 and bf16 autocast, (d) packing: two instances with resources.gpu_mem placed on
#     the one card at once (run before (b)). Prints a summary table LAST. Outputs go to $OUT (or
#     ./gpu-check-out); section.md there is that table as a docs section (COMMIT=<the commit the
#     binary was built from> names it), for `scripts/splice.sh docs/benchmarks.md gpu-check
#     section.md`. Budget: under 6 minutes (each part has its own timeout).
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-target/cuda/release/idat-pipe}
PY=${PYTHON:-python3}
OUTDIR=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUTDIR"
LOG=$OUTDIR/gpu-check.log
SUMMARY=$OUTDIR/summary.md
: >"$LOG"
: >"$SUMMARY.tmp"
say() { printf '[gpu-check] %s\n' "$*" | tee -a "$LOG" >&2; }
row() { printf '%s\n' "$*" >>"$SUMMARY.tmp"; }
STEPS=${STEPS:-10}
DEADLINE=${DEADLINE:-330}   # seconds; later parts are skipped (and say so) past it
left() { echo $((DEADLINE - SECONDS)); }
cap() { # timeout for the next part: min(want, time left), at least 5
  local l; l=$(left); [ "$l" -lt "$1" ] && echo $((l > 5 ? l : 5)) || echo "$1"; }
WARMUP=${WARMUP:-3}

# 0. Environment.
[ -x "$BIN" ] || { say "FATAL: $BIN missing or not executable (build with scripts/cuda-build.sh, carry target/cuda/release/idat-pipe)"; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$LOG" >&2
"$PY" -c 'import torch, timm, safetensors' 2>>"$LOG" || { say "FATAL: $PY lacks torch/timm/safetensors"; exit 1; }
# CUDA runtime libraries from pip's nvidia wheels (torch ships them), if present.
PYTHON=$PY . scripts/gpu-env.sh 2>>"$LOG"
MISSING=$(ldd "$BIN" 2>&1 | grep 'not found' || true)
if [ -n "$MISSING" ]; then
  say "FATAL: $BIN has unresolved libraries:"; echo "$MISSING" | tee -a "$LOG" >&2
  say "install the CUDA 13 runtime wheels (nvidia-cublas, nvidia-cuda-runtime, nvidia-curand, nvidia-cuda-nvrtc) or set LD_LIBRARY_PATH"
  exit 1
fi
"$BIN" --version | tee -a "$LOG" >&2

# (a) Parity on the committed timm fixtures.
say "(a) parity: infer --device cuda vs timm on the same GPU"
for f in crates/nn/tests/fixtures/timm/s1 crates/nn/tests/fixtures/timm/s2 crates/nn/tests/fixtures/timm/s3; do
  n=$(basename "$f")
  if timeout 60 "$BIN" infer --device cuda --model "$f.json" --weights "$f.safetensors" \
      --tensor "${f}_io.safetensors:input" --out "$OUTDIR/parity_$n.csv" >>"$LOG" 2>&1; then
    res=$(timeout 120 "$PY" - "$f" "$OUTDIR/parity_$n.csv" <<'EOF' 2>>"$LOG"
import csv, json, sys, torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer
stem, out = sys.argv[1], sys.argv[2]
cfg = json.load(open(stem + ".json"))
m = VisionTransformer(class_token=True, global_pool="token", **cfg).cuda().eval()
m.load_state_dict(load_file(stem + ".safetensors"))
x = load_file(stem + "_io.safetensors")["input"].cuda()
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
with torch.no_grad():
    ref = m(x).double().cpu()
got = torch.tensor([[float(v) for v in r[2:]] for r in list(csv.reader(open(out)))[1:]], dtype=torch.float64)
# The CPU tests' measure (crates/nn/tests/nn/nn_util.rs rel_err): max |diff| / max |ref|; the target is 1e-4.
rel = ((got - ref).abs().max() / ref.abs().max()).item()
# Element-wise, with a floor of 1e-3 on |ref|: far stricter for logits near 0.
elem = ((got - ref).abs() / ref.abs().clamp_min(1e-3)).max().item()
print(f"{rel:.3e} {'ok' if rel < 1e-4 else 'FAIL'} (element-wise {elem:.1e})")
EOF
)
    [ -n "$res" ] || res="python-error"
  else
    res="infer-failed"
  fi
  say "parity $n: max rel error $res"
  row "| parity $n (infer cuda vs timm cuda, fp32) | max rel err $res |"
done

# (d) Packing (docs/gpu.md, section 4): two train/adapt instances of the demo's mini student
#     (tests/pipelines/gpu-pack.yaml, resources.gpu_mem 2G each) must be placed on the machine's
#     one card at once and finish. Short (about 20 s; capped at 60), and only where a GPU is.
pack_check() {
  local pk=$OUTDIR/pack rc res free verdict trace
  rm -rf "$pk"; mkdir -p "$pk"
  timeout "$(cap 60)" "$BIN" --cache-dir "$pk/cache" run tests/pipelines/gpu-pack.yaml \
    --device cuda --gpus 1 -j 4 --runs-dir "$pk/runs" >"$pk/run.txt" 2>&1
  rc=$?
  cat "$pk/run.txt" >>"$LOG"
  trace=$(ls "$pk"/runs/*/trace.csv 2>/dev/null | head -1)
  # trace.csv: instance,key,status,start,end,seconds,device (fields counted from the end).
  res=$(awk -F, '$1 ~ /^at\[seed=/ { n++
        if ($(NF - 4) == "ran" && $NF ~ /^cuda:0 \(GPU /) { k++; s[k] = $(NF - 3); e[k] = $(NF - 2); dev = $NF } }
      END { ov = (k == 2 && s[1] < e[2] && s[2] < e[1]) ? "yes" : "no"
            printf "%d of %d ran on %s, overlapping: %s", k, n, (dev != "" ? dev : "cuda:0"), ov }' \
      "${trace:-/dev/null}")
  free=$(grep -h -m1 'resources.gpu_mem\|free-memory check' "$pk"/runs/*/logs/at_seed=1_*.log 2>/dev/null)
  case "$rc:$res" in
    "0:2 of 2 ran on "*", overlapping: yes") verdict=ok ;;
    *) verdict=FAIL ;;
  esac
  say "packing: $verdict (exit $rc): $res; ${free:-no free-memory line}"
  row "| packing: 2 x train/adapt, gpu_mem 2G, one card | $verdict (exit $rc): $res; log: ${free:-none} |"
}
if ! { [ -e /dev/nvidia0 ] || nvidia-smi -L >/dev/null 2>&1; }; then
  say "(d) packing: skipped, no GPU here"
  row "| packing: 2 x train/adapt, gpu_mem 2G, one card | skipped (no GPU) |"
elif [ "$(left)" -le 30 ]; then
  say "(d) packing: skipped, time budget spent"
  row "| packing: 2 x train/adapt, gpu_mem 2G, one card | skipped (time) |"
else
  say "(d) packing: two train/adapt instances with gpu_mem 2G on one card"
  pack_check
fi

# (b) idat-pipe bench on the GPU; (c) the PyTorch reference on the same card.
bench_rs() { # batch precision
  timeout "$(cap 130)" "$BIN" bench --device cuda --batch "$1" --precision "$2" --steps "$STEPS" \
    --warmup "$WARMUP" --json >"$OUTDIR/bench_rs_$2_b$1.jsonl" 2>>"$LOG" \
    || say "idat-pipe bench $2 batch $1 failed (see $LOG)"
  "$PY" - "$OUTDIR/bench_rs_$2_b$1.jsonl" "$OUTDIR/smi_rs_$2_b$1.txt" >>"$SUMMARY.tmp" <<'EOF'
import json, sys
peak = "n/a"
try:
    vals = [int(l.split()[0]) for l in open(sys.argv[2]) if l.strip() and l.split()[0].isdigit()]
    peak = f"{max(vals)} MiB (nvidia-smi, whole card)" if vals else "n/a"
except OSError:
    pass
for l in open(sys.argv[1]):
    if l.startswith("{"):
        r = json.loads(l)
        dm = r.get("device_mem_mib")
        dm = f"{dm:.0f} MiB" if dm is not None else "n/a"
        print(f"| idat-pipe {r['kind']} cuda {r.get('precision', 'f32')} batch {r['batch']} | "
              f"{r['images_per_s']:.1f} img/s, {r['median_ms']:.1f} ms/step, host peak "
              f"{r['peak_rss_mib']:.0f} MiB, device memory held {dm} (cuMemGetInfo, in process), "
              f"GPU peak {peak} |")
EOF
}
smi_watch() { # file; samples used GPU memory every 0.2 s until killed
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$1" 2>/dev/null &
    echo $!
  else echo ""; fi
}
for pr in f32 bf16; do
  for b in 64 8; do
    [ "$(left)" -gt 20 ] || { say "skipping idat-pipe bench $pr batch $b: time budget spent"; row "| idat-pipe bench $pr batch $b | skipped (time) |"; continue; }
    say "(b) idat-pipe bench --device cuda --precision $pr --batch $b"
    w=$(smi_watch "$OUTDIR/smi_rs_${pr}_b$b.txt")
    bench_rs "$b" "$pr"
    [ -n "$w" ] && kill "$w" 2>/dev/null
  done
done
for dt in f32 bf16; do
  for b in 64 8; do
    [ "$(left)" -gt 20 ] || { say "skipping pytorch $dt batch $b: time budget spent"; row "| pytorch $dt batch $b | skipped (time) |"; continue; }
    say "(c) pytorch_step.py --device cuda --dtype $dt --batch $b"
    timeout "$(cap 70)" "$PY" benches/pytorch_step.py --device cuda --dtype "$dt" --batch "$b" \
      --steps "$STEPS" --warmup "$WARMUP" --json >"$OUTDIR/bench_py_${dt}_b$b.jsonl" 2>>"$LOG" \
      || say "pytorch_step.py $dt batch $b failed (see $LOG)"
    "$PY" - "$OUTDIR/bench_py_${dt}_b$b.jsonl" >>"$SUMMARY.tmp" <<'EOF'
import json, sys
for l in open(sys.argv[1]):
    if l.startswith("{"):
        r = json.loads(l)
        print(f"| pytorch {r['kind']} cuda {r['dtype']} batch {r['batch']} | {r['images_per_s']:.1f} img/s, "
              f"{r['median_ms']:.1f} ms/step, host peak {r['peak_rss_mib']:.0f} MiB, "
              f"GPU peak {r['peak_gpu_mib']:.0f} MiB (max_memory_allocated), device memory held "
              f"{r['device_mem_mib']:.0f} MiB (mem_get_info) |")
EOF
  done
done

{
  echo
  echo "## gpu-check summary ($(date -u +%FT%TZ), steps $STEPS after $WARMUP warm-up)"
  echo "| check | result |"
  echo "|---|---|"
  cat "$SUMMARY.tmp"
} >"$SUMMARY"
# The same table as a doc section: scripts/splice.sh docs/benchmarks.md gpu-check $OUT/section.md
{
  echo "<!-- gpu-check:begin -->"
  echo "<!-- written by scripts/gpu-check.sh on the GPU machine; do not edit by hand -->"
  echo "\`scripts/gpu-check.sh\`, $(date -u '+%Y-%m-%d %H:%M UTC'), $("$BIN" --version 2>/dev/null) built from commit"
  echo "\`${COMMIT:-unknown}\` by scripts/cuda-build.sh; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 | sed 's/, / (driver /; s/$/)/');"
  echo "$(nproc) CPU cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)); PyTorch $("$PY" -c 'import torch, timm; print(torch.__version__, "+ timm", timm.__version__)' 2>/dev/null)."
  echo "Full size: ViT-S/16 teacher + ViT-B/16 student at 224x224, frozen backbones, seq_adapter"
  echo "(hidden 4), CE_s + CE_t + MSE, AdamW; $WARMUP warm-up + $STEPS timed steps."
  echo
  echo "| check | result |"
  echo "|---|---|"
  grep '^| ' "$SUMMARY" | grep -v '^| check |'
  echo "<!-- gpu-check:end -->"
} >"$OUTDIR/section.md"
rm -f "$SUMMARY.tmp"
cat "$SUMMARY"
