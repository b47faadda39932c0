#!/usr/bin/env bash
# Run the demo (pipelines/demo.yaml) from an empty cache, rerun it (everything cached), and
# write what they produced into the repository's docs, between marker comments:
#   README.md          <!-- demo-results:begin --> ... <!-- demo-results:end -->
#                      the summary the demo's report writes (its summary.txt, verbatim), the
#                      wall time and peak memory of both runs, the commit and the machine;
#   docs/benchmarks.md <!-- demo-timing:begin --> ... <!-- demo-timing:end -->
#                      the same run's time and memory, per stage.
# Nothing in those sections is typed by hand: rerun this script after a change that moves them.
#
# Usage: scripts/demo-readme.sh [BINARY]        (default target/release/idat-pipe)
# Env:   JOBS=2 (the demo's default)   WORK=<folder for the cache, runs and logs; default a
#        new /tmp folder>   FROM=<the WORK folder of an earlier run of this script: only rewrite
#        the sections from it, run nothing>   BUILD=<how the binary was built, in words, for the
#        text; default its path>
# Needs GNU time (/usr/bin/time) for the peak memory.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/idat-pipe}
jobs=${JOBS:-2}
readme=README.md
bench=docs/benchmarks.md
for f in "$readme:demo-results" "$bench:demo-timing"; do
    grep -q "<!-- ${f#*:}:begin -->" "${f%%:*}" || { echo "${f%%:*} has no ${f#*:} markers" >&2; exit 2; }
done

if [ -n "${FROM:-}" ]; then
    work=$FROM
else
    [ -x "$bin" ] || { echo "no binary at $bin: cargo build --release first" >&2; exit 2; }
    [ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 2; }
    work=${WORK:-$(mktemp -d /tmp/demo-readme.XXXXXX)}
    mkdir -p "$work"
    commit=$(git rev-parse --short HEAD)
    git diff --quiet HEAD -- src crates pipelines Cargo.toml Cargo.lock || commit="$commit+dirty"
    {
        echo "commit=$commit"
        echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "cores=$(nproc)"
        echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
        echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
        echo "binary=$bin"
        echo "build=${BUILD:-}"
    } >"$work/machine.env"
    for run in 1 2; do
        /usr/bin/time -v -o "$work/time$run.txt" "$bin" -v run pipelines/demo.yaml -j "$jobs" \
            --cache-dir "$work/cache" --runs-dir "$work/runs$run" >"$work/stdout$run.txt" 2>"$work/stderr$run.txt"
    done
fi

val() { sed -n "s/^$1=//p" "$work/machine.env"; }
commit=$(val commit) date=$(val date) cores=$(val cores) cpu=$(val cpu) load=$(val load) binary=$(val binary)
build=$(val build)
build=${build:-${BUILD:-}}
[ -n "$build" ] || build="\`$binary\`"
wall() { sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time$1.txt"; }
rss_mib() { awk '/Maximum resident set size/ { printf "%d", $NF / 1024 }' "$work/time$1.txt"; }
backend=$(sed -n 's/.*CPU GEMM backend: //p' "$work/stderr1.txt" | head -1)
tally() { grep -o '[0-9]* ran, [0-9]* cached, [0-9]* failed' "$work/stderr$1.txt" | tail -1; }
summary=$(ls "$work"/cache/entries/*/summary.txt)
[ "$(echo "$summary" | wc -l)" = 1 ] || { echo "expected one report entry, found: $summary" >&2; exit 1; }
trace=$(ls "$work"/runs1/*/trace.csv)

section=$work/readme-section.md
{
    echo "<!-- demo-results:begin -->"
    echo "<!-- written by scripts/demo-readme.sh from one run; do not edit by hand -->"
    echo "Produced by \`scripts/demo-readme.sh\` at commit \`$commit\` on $date: $cores cores"
    echo "($cpu), load average $load at the start, CPU GEMM backend"
    echo "$backend, \`-j $jobs\`, $build, empty cache. The whole demo ($(tally 1)) took"
    echo "**$(wall 1)** (h:mm:ss or m:ss) with a peak resident set of $(rss_mib 1) MiB; the rerun"
    echo "($(tally 2)) took $(wall 2). The report's summary, verbatim:"
    echo
    echo '```text'
    cat "$summary"
    echo '```'
    echo "<!-- demo-results:end -->"
} >"$section"

timing=$work/bench-section.md
{
    echo "<!-- demo-timing:begin -->"
    echo "<!-- written by scripts/demo-readme.sh from one run; do not edit by hand -->"
    echo "\`scripts/demo-readme.sh\` (\`/usr/bin/time -v idat-pipe run pipelines/demo.yaml -j $jobs\`,"
    echo "empty cache), $build, commit \`$commit\`, $date, $cores cores ($cpu)"
    echo "(load average $load at the start), CPU GEMM backend $backend:"
    echo
    echo "| what | measured |"
    echo "|---|---|"
    echo "| whole run ($(tally 1)) | $(wall 1) wall |"
    echo "| peak resident set | $(rss_mib 1) MiB |"
    echo "| rerun ($(tally 2)) | $(wall 2) wall |"
    # Per stage: instances, mean and max seconds (trace.csv:
    # instance,key,status,start,end,seconds,device; a matrix instance's name is quoted and holds
    # commas, a device name never does, so fields are counted from the end).
    awk -F, 'NR > 1 && $(NF - 4) == "ran" {
            st = $1; gsub(/"/, "", st); sub(/\[.*/, "", st)
            if (!(st in n)) order[++k] = st
            n[st]++; s[st] += $(NF - 1); if ($(NF - 1) > mx[st]) mx[st] = $(NF - 1)
        }
        END { for (i = 1; i <= k; i++) { st = order[i]
            if (n[st] == 1) printf "| %s | %.1f s |\n", st, s[st]
            else printf "| %s (%d instances) | %.1f s each on average (max %.1f) |\n", st, n[st], s[st] / n[st], mx[st] } }' "$trace"
    echo
    echo "The backbones' source-task top-1 and the accuracies of this run are in the README"
    echo "(\"What the demo does\"), from the same run."
    echo "<!-- demo-timing:end -->"
} >"$timing"

scripts/splice.sh "$readme" demo-results "$section"
scripts/splice.sh "$bench" demo-timing "$timing"
echo "wrote $readme and $bench from $work"
