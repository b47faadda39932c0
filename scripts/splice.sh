#!/usr/bin/env bash
# Replace a generated section of a doc: the lines from `<!-- NAME:begin -->` to
# `<!-- NAME:end -->` in FILE become the lines of SECTION (which holds both markers itself).
# Used by the scripts that write measured numbers into the docs, so none is typed by hand.
# FILE is left untouched unless every check passes.
#
# Usage: scripts/splice.sh FILE NAME SECTION
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 FILE NAME SECTION" >&2; exit 2; }
file=$1 name=$2 section=$3
b="<!-- $name:begin -->" e="<!-- $name:end -->"
die() { echo "splice.sh: $*" >&2; exit 2; }
[ -f "$file" ] || die "no file $file"
[ -f "$section" ] && [ -r "$section" ] || die "no section file $section"
count() { grep -cxF -- "$1" "$2" || true; }
[ "$(count "$b" "$file")" = 1 ] || die "$file must hold exactly one line $b"
[ "$(count "$e" "$file")" = 1 ] || die "$file must hold exactly one line $e"
[ "$(grep -nxF -- "$b" "$file" | cut -d: -f1)" -lt "$(grep -nxF -- "$e" "$file" | cut -d: -f1)" ] \
    || die "$file: $e comes before $b"
[ "$(head -1 "$section")" = "$b" ] && [ "$(tail -1 "$section")" = "$e" ] \
    || die "$section must start with $b and end with $e"
tmp=$(mktemp "$file.XXXXXX")
trap 'rm -f "$tmp"' EXIT
awk -v t="$section" -v b="$b" -v e="$e" '
    $0 == b { while ((getline l < t) > 0) print l; skip = 1; next }
    $0 == e { skip = 0; next }
    !skip { print }' "$file" >"$tmp"
chmod --reference="$file" "$tmp" 2>/dev/null || true
mv "$tmp" "$file"
trap - EXIT
