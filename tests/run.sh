#!/usr/bin/env bash
# Runs every test binary in $BUILD/tests and every tests/e2e_*.sh script, counts the PASS/FAIL
# lines they print, and closes with "N passed, N failed". A binary that crashes or exits
# non-zero without printing FAIL counts as one failure. --unit runs only the binaries.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
export QUANTD=${QUANTD:-$BUILD/quantd}
export QUANTD=$(realpath "$QUANTD")
export QD_FIXTURES=${QD_FIXTURES:-$(realpath ../shared/fixtures)}
unit_only=0
[ "${1:-}" = "--unit" ] && unit_only=1
pass=0; fail=0; skip=0
failed_names=()
run_one() {
    local name=$1; shift
    local log; log=$(mktemp)
    local t0=$SECONDS
    "$@" >"$log" 2>&1
    local rc=$?
    local p f s
    p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log"); s=$(grep -c '^SKIP ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "FAIL $name: exit status $rc" >>"$log"; fi
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
    printf '%-40s %3d passed %3d failed %3d skipped  (%ds)\n' "$name" "$p" "$f" "$s" $((SECONDS - t0))
    if [ "$f" -ne 0 ]; then failed_names+=("$name"); sed 's/^/    /' "$log" | tail -n 60; fi
    rm -f "$log"
}
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.d|*.o) continue;; esac
    run_one "$(basename "$t")" "$t"
done
if [ "$unit_only" -eq 0 ]; then
    for s in tests/e2e_*.sh; do
        [ -f "$s" ] || continue
        run_one "$(basename "$s")" bash "$s"
    done
fi
[ ${#failed_names[@]} -gt 0 ] && echo "failing: ${failed_names[*]}"
if [ "$skip" -gt 0 ]; then echo "$pass passed, $fail failed, $skip skipped"; else echo "$pass passed, $fail failed"; fi
[ "$fail" -eq 0 ]
