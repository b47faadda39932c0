#!/usr/bin/env bash
# Replace a generated section of a doc: the lines from `<!-- NAME:begin -->` to
# `<!-- NAME:end -->` in FILE become the lines of SECTION (which holds both markers itself).
# Used by the scripts that write measured numbers into the docs, so none is typed by hand.
#
# Usage: scripts/splice.sh FILE NAME SECTION
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 FILE NAME SECTION" >&2; exit 2; }
file=$1 name=$2 section=$3
grep -q "<!-- $name:begin -->" "$file" || { echo "$file has no <!-- $name:begin --> marker" >&2; exit 2; }
grep -q "<!-- $name:end -->" "$file" || { echo "$file has no <!-- $name:end --> marker" >&2; exit 2; }
awk -v t="$section" -v b="<!-- $name:begin -->" -v e="<!-- $name:end -->" '
    index($0, b) { while ((getline l < t) > 0) print l; skip = 1; next }
    index($0, e) { skip = 0; next }
    !skip { print }' "$file" >"$file.new"
mv "$file.new" "$file"
