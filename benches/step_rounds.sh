#!/usr/bin/env bash
# Interleaved rounds of the full-size training steps: idat-pipe (OpenBLAS with
# OPENBLAS_CORETYPE=Haswell as the development machines set it, OpenBLAS with its native
# kernel choice, the pure-Rust
# `gemm` crate; f32 and --precision bf16) against PyTorch (f32 and bf16 autocast), every
# contestant in its own process, one after the other inside each round, so that all see the
# same load on a shared machine. Prints one JSON line per run, tagged with round, contestant
# and step; benches/step_rounds_summary.py turns them into the table of docs/benchmarks.md.
#
#   benches/step_rounds.sh ROUNDS [extra flags for both tools, e.g. --batch 64 --model-s ...]
#
# CONTESTANTS (default: all six below) and STEP_KINDS (default: "at idat") choose a subset.
# Needs a release build (target/release/idat-pipe) and /work/venv (torch + timm), or set
# IDAT_PIPE and PYTHON.
set -euo pipefail
rounds=${1:-3}
shift || true
bin=${IDAT_PIPE:-target/release/idat-pipe}
py=${PYTHON:-/work/venv/bin/python}
common=(--threads 2 --json "$@")
native=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
# The development / CI environment's setting (docs/benchmarks.md), set explicitly.
haswell=(env OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512)
run() { # tag step command...
  local tag=$1 step=$2
  shift 2
  local line
  line=$("$@" --mode "$step" "${common[@]}" | grep '^{' | tail -1) || {
    echo "{\"contestant\":\"$tag\",\"step\":\"$step\",\"round\":$r,\"failed\":true}"
    return
  }
  echo "{\"contestant\":\"$tag\",\"step\":\"$step\",\"round\":$r,\"at\":\"$(date -u +%H:%M:%S)\",\"load\":\"$(cut -d' ' -f1 /proc/loadavg)\",\"report\":$line}"
}
contestants=${CONTESTANTS:-openblas-haswell openblas-native openblas-native-bf16 gemm-crate pytorch-f32 pytorch-bf16}
for r in $(seq 1 "$rounds"); do
  for step in ${STEP_KINDS:-at idat}; do
    for c in $contestants; do
      case $c in
        openblas-haswell) run "$c" "$step" "${haswell[@]}" "$bin" bench ;;
        openblas-haswell-bf16) run "$c" "$step" "${haswell[@]}" "$bin" bench --precision bf16 ;;
        openblas-native) run "$c" "$step" "${native[@]}" "$bin" bench ;;
        openblas-native-bf16) run "$c" "$step" "${native[@]}" "$bin" bench --precision bf16 ;;
        gemm-crate) run "$c" "$step" env IDAT_BLAS=off "$bin" bench ;;
        pytorch-f32) run "$c" "$step" "$py" benches/pytorch_step.py ;;
        pytorch-bf16) run "$c" "$step" "$py" benches/pytorch_step.py --dtype bf16 ;;
        *) echo "unknown contestant $c" >&2; exit 2 ;;
      esac
    done
  done
done
