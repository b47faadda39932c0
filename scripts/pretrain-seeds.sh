#!/usr/bin/env bash
# Pretrain the demo's two backbones (stages `pretrain_teacher` and `pretrain_student` of
# pipelines/demo.yaml, exactly as the demo has them) over several pretraining seeds with both
# GEMM backends (`IDAT_BLAS=off`: the pure-Rust gemm crate; `IDAT_BLAS=openblas`: the system
# OpenBLAS), and write the table of source-task test top-1 between the markers
# `<!-- pretrain-seeds:begin -->` and `<!-- pretrain-seeds:end -->` in docs/mini-vtab.md.
#
# Usage: scripts/pretrain-seeds.sh [BINARY]     (default target/release/idat-pipe)
# Env:   SEEDS="0 1 2"  BACKENDS="off openblas"  DOC=docs/mini-vtab.md
#        WORK=<folder; default a new /tmp folder>. Rows measured go to WORK/rows-<hash of
#        demo.yaml>.tsv; a rerun with the same WORK and pipeline file skips the (backbone, seed,
#        backend) rows it has, so the table can be measured in several sittings.
#        CACHE_off=<cache>, CACHE_openblas=<cache>: cache folder per backend (default WORK/<backend>);
#        point CACHE_openblas at the cache of a demo run to reuse its seed-0 backbones (the row
#        then says `cached`, not a time).
#        CACHED_ONLY=1: run nothing; table only the rows measured before and the instances the
#        caches already hold.
#
# Runs one instance at a time (exec-stage, with the machine's core count as threads), from its
# own cache per backend (cache keys do not include the backend). Needs libopenblas0 for the
# openblas rows.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/idat-pipe}
seeds=${SEEDS:-0 1 2}
backends=${BACKENDS:-off openblas}
doc=${DOC:-docs/mini-vtab.md}
work=${WORK:-$(mktemp -d /tmp/pretrain-seeds.XXXXXX)}
pipe=pipelines/demo.yaml
[ -x "$bin" ] || { echo "no binary at $bin: cargo build --release first" >&2; exit 2; }
grep -q '<!-- pretrain-seeds:begin -->' "$doc" || { echo "$doc has no pretrain-seeds markers" >&2; exit 2; }

cache_of() { local v="CACHE_$1"; echo "${!v:-$work/$1}"; }
# Prints "ran <key>" or "cached <key>" for the instance.
exec_stage() { # backend instance [--set ...]
    local b=$1 inst=$2; shift 2
    IDAT_BLAS=$b "$bin" -q exec-stage "$pipe" --instance "$inst" --cache-dir "$(cache_of "$b")" "$@" \
        | awk -v i="$inst" '($1 == "ran" || $1 == "cached") && $2 == i { print $1, $3 }'
}

# Rows measured with another version of the pipeline file are not reused.
rows=$work/rows-$(sha256sum "$pipe" | cut -c1-12).tsv
touch "$rows"
for b in $backends; do
    if [ -z "${CACHED_ONLY:-}" ]; then
        exec_stage "$b" source >/dev/null
        exec_stage "$b" decode_source >/dev/null
    fi
    for s in $seeds; do
        for m in teacher student; do
            if awk -F'\t' -v m="$m" -v s="$s" -v b="$b" '$1 == m && $2 == s && $3 == b { f = 1 } END { exit !f }' "$rows"; then
                continue
            fi
            if [ -n "${CACHED_ONLY:-}" ] && ! IDAT_BLAS=$b "$bin" plan "$pipe" --cache-dir "$(cache_of "$b")" \
                --set "stages.pretrain_$m.with.seed=$s" 2>/dev/null | grep -q "^cached  *pretrain_$m\$"; then
                continue
            fi
            t0=$(date +%s.%N)
            read -r how key < <(exec_stage "$b" "pretrain_$m" --set "stages.pretrain_$m.with.seed=$s")
            t1=$(date +%s.%N)
            [ -n "${key:-}" ] || { echo "pretrain_$m (seed $s, $b) did not run" >&2; exit 1; }
            top1=$(sed -n 's/.*"top1": *\([0-9.]*\).*/\1/p' "$(cache_of "$b")/entries/$key/pretrain.json" | head -1)
            secs=$(printf '%.0f' "$(echo "$t1 - $t0" | bc)")
            [ "$how" = ran ] || secs="cached"
            printf '%s\t%s\t%s\t%s\t%s\n' "$m" "$s" "$b" "$top1" "$secs" | tee -a "$rows"
        done
    done
done

commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src pipelines Cargo.toml Cargo.lock || echo "+dirty")
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
table=$work/table.md
{
    echo "<!-- pretrain-seeds:begin -->"
    echo "<!-- written by scripts/pretrain-seeds.sh; do not edit by hand -->"
    echo "Source-task test top-1 (%) of the demo's backbones (1,000 test images of \`mini_source\`),"
    echo "per pretraining seed (\`--set stages.pretrain_M.with.seed=S\`) and GEMM backend (\`IDAT_BLAS\`)."
    echo "Commit \`$commit\`, $(date -u +%Y-%m-%d), $(nproc) cores ($cpu), shared with other work;"
    echo "seconds: wall time of one instance on $(nproc) threads; \`cached\`: the entry of an earlier run"
    echo "of the same stage (same cache key: same code version, parameters and input) was reused."
    echo "Combinations missing from the table were not measured."
    echo
    echo "| backbone | seed | backend | source top-1 | seconds |"
    echo "|---|---|---|---|---|"
    sort -t$'\t' -k1,1r -k3,3 -k2,2n "$rows" | awk -F'\t' '{ printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }'
    awk -F'\t' '
        { n[$1]++; s[$1] += $4; if (!($1 in lo) || $4 < lo[$1]) lo[$1] = $4; if ($4 > hi[$1]) hi[$1] = $4 }
        END { printf "\n"; for (m in n) printf "%s: mean %.2f, min %.2f, max %.2f over %d runs.  \n", m, s[m] / n[m], lo[m], hi[m], n[m] }' "$rows" | sort
    echo "<!-- pretrain-seeds:end -->"
} >"$table"
awk -v t="$table" '
    /<!-- pretrain-seeds:begin -->/ { while ((getline l < t) > 0) print l; skip = 1; next }
    /<!-- pretrain-seeds:end -->/ { skip = 0; next }
    !skip { print }' "$doc" >"$work/doc.new"
mv "$work/doc.new" "$doc"
echo "wrote the table into $doc (work folder $work)"
