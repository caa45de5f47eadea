#!/usr/bin/env bash
# Stop means stop (issues 13 and 15), end to end with the real binary and real signals.
#  - `quantd quantize` on a random-weight model big enough that each phase lasts seconds
#    (bench_scale --write): SIGTERM or SIGINT sent in each phase (load, FP32 evaluation,
#    calibration, optimization, GPTQ, a variant's evaluation, export), the phase told from the
#    progress lines; the process exits 130 within STOP_S seconds of the signal, writes no
#    report.json, and a rerun after the stop in GPTQ resumes past the training; a second
#    SIGINT during the first one's stop ends the process at once and a rerun still completes.
#  - the service: a cancelled job never keeps a report.json (one planted as if the worker had
#    written it just before the cancel is removed, GET /report is 404); a worker killed from
#    outside (SIGKILL) is retried from its checkpoint until max_attempts, then the job fails;
#    after kill -9 of the server, two orphaned workers that ignore SIGTERM (stopped with
#    SIGSTOP) are reaped together within one cancel_grace_s, while the API answers.
set -u
. "$(dirname "$0")/e2e_common.inc"
BUILD=${BUILD:-$(dirname "$Q")}
SCALE=$BUILD/bench/bench_scale
STOP_S=6   # the target is 2 s; the bound is generous for a loaded 2-core machine
[ -x "$SCALE" ] || { bad setup "$SCALE missing (make builds it)"; exit 1; }

M=$TMP/synth
"$SCALE" --write "$M" --dim 384 --hidden 1024 --layers 4 --heads 6 --kv-heads 6 --vocab 8192 \
    --ctx 256 --tokens 4096 || { bad setup "bench_scale --write failed"; exit 1; }
ARGS=(--model "$M" --calib "$M/tokens.u32.bin" --eval-split 0.5 --samples 8 --seq-len 128 --epochs 2)

# stop_in NAME SIGNAL PATTERN N [quantize options]: starts quantize, sends SIGNAL once the N-th
# progress line matching PATTERN appears, checks the exit. Sets LANDED (the phase of the last
# progress line before the stop) and OUT.
stop_in() {
    local name=$1 sig=$2 pat=$3 nth=$4; shift 4
    OUT=$TMP/out-$name
    local log=$TMP/$name.log
    rm -rf "$OUT"; : >"$log"
    "$Q" quantize "${ARGS[@]}" --out "$OUT" "$@" 2>"$log" >/dev/null &
    local pid=$! seen=0
    for _ in $(seq 3000); do
        seen=$(grep -cE "$pat" "$log")
        [ "$seen" -ge "$nth" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    local t0; t0=$(date +%s.%N)
    kill -"$sig" "$pid" 2>/dev/null
    local rc=0
    for _ in $(seq $((STOP_S * 20 + 100))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    local t1; t1=$(date +%s.%N)
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    wait "$pid"; rc=$?
    local dt; dt=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    # progress lines: "[ 4/13] mobilequant optimize 6/16 ...", "[ 1/13] load 0/3 ..."
    LANDED=$(grep -E '^\[ *[0-9]+/[0-9]+\] ' "$log" | tail -1 |
             sed -E 's/^\[ *[0-9]+\/[0-9]+\] (([a-z0-9]+) )?([a-z]+) [0-9]+\/[0-9]+.*/\3/')
    echo "# $name: SIG$sig after the ${nth}th '$pat', landed in '$LANDED', exit $rc after ${dt}s"
    check "stop_${name}_seen" '[ "$seen" -ge "$nth" ]' "never saw '$pat' ($nth); $(tail -3 "$log")"
    check "stop_${name}_exit_130" '[ "$rc" = 130 ] && grep -q "stopped; state saved" "$log"' "rc=$rc $(tail -3 "$log")"
    check "stop_${name}_prompt" 'awk -v d="$dt" -v m="$STOP_S" "BEGIN { exit !(d < m) }"' "${dt}s"
    check "stop_${name}_no_report" '[ ! -e "$OUT/report.json" ]'
}

stop_in load TERM '\] load ' 1
stop_in eval_fp32 INT '\] fp32 eval' 1
check stop_eval_fp32_landed '[ "$LANDED" = eval ]' "$LANDED"
stop_in calibrate TERM '\] mobilequant calibrate 0/' 1
check stop_calibrate_landed '[ "$LANDED" = calibrate ]' "$LANDED"
stop_in optimize TERM '\] mobilequant optimize [1-9]' 1
check stop_optimize_landed '[ "$LANDED" = optimize ]' "$LANDED"
check stop_optimize_checkpoint '[ -s "$OUT/checkpoint" ]'
stop_in gptq TERM '\] mobilequant gptq' 1
check stop_gptq_landed '[ "$LANDED" = gptq ]' "$LANDED"
check stop_gptq_checkpoint '[ -s "$OUT/checkpoint" ]'
# the rerun resumes with the training finished: no optimizer step, and it completes
"$Q" quantize "${ARGS[@]}" --out "$OUT" 2>"$TMP/resume.log" >/dev/null; rc=$?
check resume_after_gptq_stop '[ $rc = 0 ] && [ -s "$OUT/report.json" ] && ! grep -q "optimize [0-9]" "$TMP/resume.log" && [ ! -e "$OUT/checkpoint" ]' "rc=$rc $(grep -c 'optimize [0-9]' "$TMP/resume.log") optimize lines; $(tail -3 "$TMP/resume.log")"
check resume_report_resumed 'jq -e ".compute.resumed_at_step == .compute.optimizer_steps and .compute.optimizer_steps == 16" "$OUT/report.json" >/dev/null' "$(jq -c .compute "$OUT/report.json" 2>/dev/null)"
# a second Ctrl-C while the first is being honoured ends the process at once (the default
# action, no "state saved"); the atomic checkpoint write leaves the old checkpoint or none,
# never a torn one, so a rerun still completes
# The second signal must land while the first is being honoured (a stop takes milliseconds
# to tens of them here: the loop's next poll, the checkpoint's write and fsync), so the
# first is delivered on SIGCONT and the second follows after GAP; up to three tries with
# shorter gaps, one that ends at once suffices, and every try must end one of the two ways.
OUT=$TMP/out-double
killed=0 odd=""
for gap in 0.005 0.002 0.001; do
    rm -rf "$OUT"
    "$Q" quantize "${ARGS[@]}" --out "$OUT" 2>"$TMP/double.log" >/dev/null &
    pid=$!
    for _ in $(seq 3000); do grep -qE '\] mobilequant optimize [1-9]' "$TMP/double.log" && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -STOP "$pid"; kill -INT "$pid"; kill -CONT "$pid"; sleep "$gap"; kill -INT "$pid" 2>/dev/null
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    wait "$pid"; rc=$?
    echo "# double Ctrl-C, gap ${gap}s: exit $rc, $(grep -c 'stopped; state saved' "$TMP/double.log") 'state saved' lines"
    if [ "$rc" != 130 ] || [ -e "$OUT/report.json" ]; then odd="rc=$rc at gap $gap; $(tail -2 "$TMP/double.log")"; break; fi
    grep -q "stopped; state saved" "$TMP/double.log" || { killed=1; break; }
done
check double_ctrl_c_ends_at_once '[ -z "$odd" ] && [ "$killed" = 1 ]' "${odd:-every try ended with the state of the first stop saved}"
"$Q" quantize "${ARGS[@]}" --out "$OUT" 2>"$TMP/double2.log" >/dev/null; rc=$?
check double_ctrl_c_rerun_completes '[ $rc = 0 ] && [ -s "$OUT/report.json" ]' "rc=$rc $(tail -3 "$TMP/double2.log")"

# a variant's evaluation (rtn's) and export
stop_in eval_variant TERM '\] rtn eval' 1 --method rtn
check stop_eval_variant_landed '[ "$LANDED" = eval ]' "$LANDED"
stop_in export TERM '\] export' 1 --method rtn
check stop_export_landed '[ "$LANDED" = export ] || [ "$LANDED" = eval ]' "$LANDED"

# ---- the service (stories260K; LONG keeps the optimizer busy until the test acts)
LONG='"budget":{"samples":64,"seq_len":64,"epochs":1000}'
D=$TMP/data
start_server "$D" --workers 2 --set cancel_grace_s=5 --set max_attempts=2 || { bad start "$(cat "$D.err")"; exit 1; }
MID=$(upload "$MODEL"); CID=$(upload "$TEXT")
IN="\"model\":\"$MID\",\"calibration\":\"$CID\""

# a cancelled job keeps no report.json, even one written just before the cancel landed
J=$(submit "{$IN,\"method\":\"mobilequant\",$LONG}")
wait_optimizing "$J" 120
echo '{"planted": true}' >"$D/jobs/$J/artifacts/report.json"
code POST "/v1/jobs/$J/cancel" >/dev/null
wait_state "$J" "cancelled|failed|succeeded" 30
check cancelled_job_has_no_report '[ "$(job_state "$J")" = cancelled ] && [ ! -e "$D/jobs/$J/artifacts/report.json" ] && [ "$(code GET "/v1/jobs/$J/report")" = 404 ]' "$(job_state "$J") $(ls "$D/jobs/$J/artifacts")"

# a worker killed from outside: retried from its checkpoint, then failed after max_attempts
J=$(submit "{$IN,\"method\":\"mobilequant\",$LONG}")
wait_optimizing "$J" 120
for _ in $(seq 600); do [ -s "$D/jobs/$J/checkpoint" ] && break; sleep 0.1; done
kill -KILL "$(curl -s "$URL/v1/jobs/$J" | jq .worker.pid)"
for _ in $(seq 600); do
    [ "$(curl -s "$URL/v1/jobs/$J" | jq -r '"\(.state) \(.attempts)"')" = "running 2" ] && break
    sleep 0.1
done
wait_optimizing "$J" 120
curl -s "$URL/v1/jobs/$J" >"$TMP/job"
check killed_worker_retried '[ "$(jq -r .state "$TMP/job")" = running ] && [ "$(jq .attempts "$TMP/job")" = 2 ] && grep -q "retrying from its checkpoint (attempt 2 of 2)" "$D/jobs/$J/events.jsonl"' "$(jq -c '{state,attempts,error}' "$TMP/job")"
check killed_worker_resumed 'grep -q "resuming from checkpoint" "$D/jobs/$J/worker.log"' "$(tail -5 "$D/jobs/$J/worker.log")"
kill -KILL "$(jq .worker.pid "$TMP/job")"
wait_state "$J" "failed|succeeded|cancelled|queued" 30
curl -s "$URL/v1/jobs/$J" >"$TMP/job"
check killed_worker_fails_after_max_attempts '[ "$(jq -r .state "$TMP/job")" = failed ] && jq -r .error "$TMP/job" | grep -q "signal 9"' "$(jq -c '{state,attempts,error}' "$TMP/job")"

# kill -9 of the server with two workers that ignore SIGTERM (stopped): the restarted server
# reaps both within one grace period (not one each), and answers while it does
A=$(submit "{$IN,\"method\":\"mobilequant\",$LONG}")
B=$(submit "{$IN,\"method\":\"mobilequant\",$LONG}")
wait_optimizing "$A" 120; wait_optimizing "$B" 120
pa=$(curl -s "$URL/v1/jobs/$A" | jq .worker.pid); pb=$(curl -s "$URL/v1/jobs/$B" | jq .worker.pid)
kill -STOP "$pa" "$pb"
kill -KILL "$SPID"; wait "$SPID" 2>/dev/null; SPID=
t0=$(date +%s.%N)
start_server "$D" --workers 2 --set cancel_grace_s=5 --set max_attempts=2 || bad restart "$(cat "$D.err")"
h0=$(date +%s.%N)
hz=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$URL/healthz")
h1=$(date +%s.%N)
for _ in $(seq 300); do
    kill -0 "$pa" 2>/dev/null || kill -0 "$pb" 2>/dev/null || break
    sleep 0.05
done
t1=$(date +%s.%N)
reap=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
answer=$(awk -v a="$h0" -v b="$h1" 'BEGIN { printf "%.2f", b - a }')
echo "# restart: healthz answered in ${answer}s; both stopped orphans gone ${reap}s after the restart began (grace 5 s)"
check restart_answers_while_reaping '[ "$hz" = 200 ] && awk -v d="$answer" "BEGIN { exit !(d < 2) }"' "healthz $hz in ${answer}s"
check restart_reaps_orphans_together '! kill -0 "$pa" 2>/dev/null && ! kill -0 "$pb" 2>/dev/null && awk -v d="$reap" "BEGIN { exit !(d < 9) }"' "${reap}s"
wait_state "$A" "running|queued" 30; wait_state "$B" "running|queued" 30
check restart_requeues_both 'grep -q "server restarted" "$D/jobs/$A/events.jsonl" && grep -q "server restarted" "$D/jobs/$B/events.jsonl"'
code POST "/v1/jobs/$A/cancel" >/dev/null; code POST "/v1/jobs/$B/cancel" >/dev/null
wait_state "$A" "cancelled|failed" 30; wait_state "$B" "cancelled|failed" 30
stop_server
