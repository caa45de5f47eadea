#!/usr/bin/env bash
# Jobs on a real Slurm: starts a single-node cluster on loopback (munged, slurmctld, slurmd from
# Debian, no systemd; tests/slurm_cluster.inc) and drives the real `quantd serve` with
# dispatcher = slurm through curl: jobs to success with SSE progress and artifacts, the sbatch
# options a job gets, a worker's failing exit status, cancel (SIGTERM reaches the worker, which
# checkpoints), the server's timeout and Slurm's own (--time), sbatch refusing a job, kill -9 of
# the server and a restart that follows the same Slurm job (never a second copy), a job that
# finished while the server was down, a Slurm job that vanished (requeued, resumes from its
# checkpoint), a node set down under a running job and a drained node under a pending one.
# Where Slurm cannot start the test fails and says why: it never skips silently.
set -u
. "$(dirname "$0")/e2e_common.inc"
. "$(dirname "$0")/slurm_cluster.inc"

# workers of this test still running on the "node" (they run as children of slurmstepd)
kill_our_workers() {
    local p
    for p in /proc/[0-9]*; do
        tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q " work $TMP/" && kill -KILL "${p#/proc/}" 2>/dev/null
    done
}
trap 'slurm_down; kill_our_workers; cleanup' EXIT

SMALL='"budget":{"samples":4,"seq_len":64,"epochs":1}'
LONG='"budget":{"samples":64,"seq_len":64,"epochs":1000}'
RESUME='"budget":{"samples":8,"seq_len":64,"epochs":20}'

if [ "$(id -u)" != 0 ]; then
    bad slurm_cluster_up "slurmd must run as root to start jobs as their user: run this test as root (CI does)"
    exit 1
fi
if ! slurm_up "$TMP/slurm" 8; then
    bad slurm_cluster_up "$SLURM_UP_ERR"
    exit 1
fi
ok slurm_cluster_up

slurm_field() { # ID FIELD: one field of `scontrol show job`
    scontrol --oneliner show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1
}
slurm_id() { curl -s "$URL/v1/jobs/$1" | jq -r '.slurm.job_id // empty'; }
# wait_slurm_state SLURM_ID "STATE1|STATE2" SECONDS
wait_slurm_state() {
    local s=
    for _ in $(seq $(($3 * 5))); do
        s=$(squeue -h -t all -j "$1" -o %T 2>/dev/null)
        case "|$2|" in *"|$s|"*) return 0;; esac
        sleep 0.2
    done
    echo "  Slurm job $1 is '$s', wanted $2" >&2
    return 1
}
# side_job URL 'SPEC FIELDS': uploads the fixtures to another server and submits a job there.
side_job() {
    local m c
    m=$(curl -s -H 'Content-Type: application/octet-stream' --data-binary "@$MODEL" "$1/v1/blobs" | jq -r .id)
    c=$(curl -s -H 'Content-Type: application/octet-stream' --data-binary "@$TEXT" "$1/v1/blobs" | jq -r .id)
    curl -s -H 'Content-Type: application/json' "$1/v1/jobs" \
        -d "{\"model\":\"$m\",\"calibration\":\"$c\",$2}" | jq -r '.id // empty'
}
# side_wait URL ID SECONDS: until the job there is no longer queued or running.
side_wait() {
    for _ in $(seq $(($3 * 5))); do
        case "$(curl -s "$1/v1/jobs/$2" | jq -r .state)" in running|queued) sleep 0.2;; *) return 0;; esac
    done
    return 1
}
job_brief() { curl -s "$URL/v1/jobs/$1" | jq -c '{state,attempts,error,slurm,worker}'; }

# --- a Slurm set-up that cannot work is refused at start, with the reason
timeout 20 env PATH=/nonexistent "$Q" serve --listen 127.0.0.1:0 --data "$TMP/nopath" --set dispatcher=slurm \
    >/dev/null 2>"$TMP/nopath.err"
rc=$?
check serve_refuses_slurm_without_sbatch '[ "$rc" = 1 ] && grep -q "sbatch is not on PATH" "$TMP/nopath.err"' "rc $rc: $(cat "$TMP/nopath.err")"
timeout 20 "$Q" serve --listen 127.0.0.1:0 --data "$TMP/notmpl" --set dispatcher=slurm \
    --set slurm_template=/nonexistent/quantd.sbatch >/dev/null 2>"$TMP/notmpl.err"
rc=$?
check serve_refuses_missing_template '[ "$rc" = 1 ] && grep -q "slurm_template /nonexistent/quantd.sbatch: No such file" "$TMP/notmpl.err"' "rc $rc: $(cat "$TMP/notmpl.err")"

SLURM_FLAGS=(--set dispatcher=slurm --set slurm_poll_s=0.3 --set cancel_grace_s=5
             --set slurm_pending_down_s=3 --set worker_mem_bytes=2G)

# --- a second server whose jobs get Slurm's --time=1 (minute) through slurm_sbatch_args: its
# job runs into the cluster's time limit while the tests below run
start tlim "${SLURM_FLAGS[@]}" --set "slurm_sbatch_args=--time=1" || bad tlim_start "$(cat "$TMP/tlim.err")"
TURL=$SURL
TJ=$(side_job "$TURL" "\"method\":\"mobilequant\",$LONG")
check slurm_time_limit_job_submitted '[ -n "$TJ" ]'

# --- and a third whose jobs get --mem=8M: Slurm kills its worker for its memory (the door's
# memory estimate would refuse such a job at submit: worker_mem_check=0 lets it through)
start oom "${SLURM_FLAGS[@]}" --set worker_mem_bytes=8M --set worker_mem_check=0 || bad oom_start "$(cat "$TMP/oom.err")"
OURL=$SURL
OJ=$(side_job "$OURL" "\"method\":\"mobilequant\",$LONG")
check slurm_oom_job_submitted '[ -n "$OJ" ]'

D=$TMP/data
start_server "$D" --workers 2 "${SLURM_FLAGS[@]}" || { bad start "$(cat "$D.err")"; exit 1; }
check startup_log_says_shared_fs 'grep -q "must be on a filesystem that the compute nodes share" "$D.err" && grep -q "dispatcher slurm" "$D.err"' "$(cat "$D.err")"
MID=$(upload "$MODEL")
CID=$(upload "$TEXT")
IN="\"model\":\"$MID\",\"calibration\":\"$CID\""

# --- RTN to success on the cluster, followed over SSE
J=$(submit "{$IN,\"method\":\"rtn\",$SMALL,\"threads\":2,\"gates\":{\"max_ppl_increase\":10}}")
check rtn_submitted '[ -n "$J" ]' "$(body)"
timeout 180 curl -sN "$URL/v1/jobs/$J/events" >"$TMP/sse" 2>/dev/null
last_state=$(grep '^data: ' "$TMP/sse" | sed 's/^data: //' | jq -r 'select(.type=="state") | .state' | tail -1)
check rtn_sse_ends_succeeded '[ "$last_state" = succeeded ]' "last state '$last_state'; $(job_brief "$J"); $(tail -c 600 "$D/jobs/$J/worker.log" 2>/dev/null)"
check sse_has_progress 'grep -q "^event: progress" "$TMP/sse"'
curl -s "$URL/v1/jobs/$J" >"$TMP/job"
SID=$(jq -r '.slurm.job_id // empty' "$TMP/job")
check job_records_slurm_id '[[ "$SID" =~ ^[0-9]+$ ]] && [ "$(jq -r .slurm.job_id "$D/jobs/$J/job.json")" = "$SID" ] && [ "$(jq -r .slurm.state "$TMP/job")" = COMPLETED ]' "$(jq -c .slurm "$TMP/job")"
check slurm_job_named_after_job '[ "$(slurm_field "$SID" JobName)" = "quantd-$J" ]' "JobName=$(slurm_field "$SID" JobName)"
check sbatch_cpus_from_spec '[ "$(slurm_field "$SID" NumCPUs)" = 2 ]' "NumCPUs=$(slurm_field "$SID" NumCPUs)"
check sbatch_mem_from_limit '[ "$(slurm_field "$SID" MinMemoryNode)" = 2G ]' "MinMemoryNode=$(slurm_field "$SID" MinMemoryNode)"
check sbatch_output_in_jobdir '[ "$(slurm_field "$SID" StdOut)" = "$(realpath "$D")/jobs/$J/worker.log" ] && grep -q "quantd.sbatch: Slurm job $SID" "$D/jobs/$J/worker.log"' "StdOut=$(slurm_field "$SID" StdOut)"
check sbatch_time_from_timeout '[ -n "$(slurm_field "$SID" TimeLimit)" ] && [ "$(slurm_field "$SID" TimeLimit)" != UNLIMITED ]' "TimeLimit=$(slurm_field "$SID" TimeLimit)"
check rtn_artifacts '[ "$(code GET "/v1/jobs/$J/artifacts/model.qint.safetensors")" = 200 ] && cmp -s "$TMP/body" "$D/jobs/$J/artifacts/model.qint.safetensors"'
check rtn_report '[ "$(code GET "/v1/jobs/$J/report")" = 200 ] && jq -e ".eval.int.ppl > 0" "$TMP/body" >/dev/null'
check metrics_count_it 'curl -s "$URL/metrics" | grep -q "^quantd_jobs{state=\"succeeded\"} 1"'

# --- MobileQuant end to end, progress through the job record while it runs
J=$(submit "{$IN,\"method\":\"mobilequant\",$RESUME}")
wait_optimizing "$J" 120
check mobilequant_progress_while_running '[ "$(curl -s "$URL/v1/jobs/$J" | jq -r "[.state, .progress.phase, .slurm.state] | @tsv")" = "$(printf "running\toptimize\tRUNNING")" ]' "$(job_brief "$J")"
wait_state "$J" "succeeded|failed|timed_out" 180
check mobilequant_succeeded '[ "$(job_state "$J")" = succeeded ] && [ "$(code GET "/v1/jobs/$J/report")" = 200 ] && jq -e ".eval.mobilequant.ppl > 0" "$TMP/body" >/dev/null' "$(job_brief "$J")"

# --- a worker that fails: its exit status, its reason (the job's error) and log tail reach the job
# (a NaN weight: it passes the door's header checks and fails when the worker loads it)
python3 tests/bad_inputs.py "$FX" "$TMP/bad"
BAD=$(upload "$TMP/bad/nan.gguf")
J=$(submit "{\"model\":\"$BAD\",\"calibration\":\"$CID\",\"method\":\"rtn\",$SMALL}")
wait_state "$J" "failed|succeeded" 120
curl -s "$URL/v1/jobs/$J" >"$TMP/job"
check worker_exit_status_fails_job '[ "$(jq -r .state "$TMP/job")" = failed ] && [ "$(jq -r .worker.exit_code "$TMP/job")" = 1 ] && jq -r .error "$TMP/job" | grep -q "^model: tensor token_embd.weight: .* NaN" && [ -n "$(jq -r ".log_tail // empty" "$TMP/job")" ] && [ "$(jq -r .slurm.state "$TMP/job")" = FAILED ]' "$(jq -c '{state,error,worker,slurm}' "$TMP/job")"

# --- cancel: SIGTERM reaches the worker through scancel, it checkpoints; the Slurm job ends
J=$(submit "{$IN,\"method\":\"mobilequant\",$LONG}")
wait_optimizing "$J" 120
SID=$(slurm_id "$J")
check cancel_202 '[ "$(code POST "/v1/jobs/$J/cancel")" = 202 ]'
wait_state "$J" "cancelled|failed|succeeded" 60
check cancelled '[ "$(job_state "$J")" = cancelled ]' "$(job_brief "$J")"
check cancel_sigterm_checkpoint 'grep -q "stopped; checkpoint written" "$D/jobs/$J/worker.log" && [ -f "$D/jobs/$J/checkpoint" ]' "$(tail -5 "$D/jobs/$J/worker.log")"
check cancel_ends_slurm_job '! squeue -h -j "$SID" -t pending,running 2>/dev/null | grep -q .'

# --- the server's own timeout
J=$(submit "{$IN,\"method\":\"mobilequant\",$LONG,\"timeout_s\":4}")
wait_state "$J" "timed_out|failed|succeeded|cancelled" 120
check server_timeout '[ "$(job_state "$J")" = timed_out ] && curl -s "$URL/v1/jobs/$J" | jq -r .error | grep -q timeout_s' "$(job_brief "$J")"

# --- sbatch refuses: a partition the cluster does not have
start badpart "${SLURM_FLAGS[@]}" --set slurm_partition=nosuchpart || bad badpart_start "$(cat "$TMP/badpart.err")"
BJ=$(side_job "$SURL" "\"method\":\"rtn\",$SMALL")
side_wait "$SURL" "$BJ" 30
curl -s "$SURL/v1/jobs/$BJ" >"$TMP/job"
check sbatch_refused_reason '[ "$(jq -r .state "$TMP/job")" = failed ] && jq -r .error "$TMP/job" | grep -q "sbatch refused" && jq -r .error "$TMP/job" | grep -qi "partition"' "$(jq -c '{state,error}' "$TMP/job")"

# --- sbatch cannot reach the controller: a slurm.conf naming a port nobody listens on
sed -e "s/^SlurmctldPort=.*/SlurmctldPort=$(_slurm_free_port)/" -e "s/^MessageTimeout=.*/MessageTimeout=2/" \
    "$SLURM_CONF" >"$TMP/unreachable.conf"
SLURM_CONF=$TMP/unreachable.conf start unreach "${SLURM_FLAGS[@]}" || bad unreach_start "$(cat "$TMP/unreach.err")"
UJ=$(side_job "$SURL" "\"method\":\"rtn\",$SMALL")
side_wait "$SURL" "$UJ" 60
curl -s "$SURL/v1/jobs/$UJ" >"$TMP/job"
check sbatch_unreachable_controller '[ "$(jq -r .state "$TMP/job")" = failed ] && jq -r .error "$TMP/job" | grep -q "sbatch refused.*Unable to contact slurm controller"' "$(jq -c '{state,error}' "$TMP/job")"

# --- kill -9 of the server mid-job: the restarted server follows the same Slurm job
J=$(submit "{$IN,\"method\":\"mobilequant\",$LONG}")
wait_optimizing "$J" 120
SID=$(slurm_id "$J")
kill -KILL "$SPID"; wait "$SPID" 2>/dev/null; SPID=
check slurm_job_outlives_server '[ "$(squeue -h -j "$SID" -o %T)" = RUNNING ]'
step_before=$(jq -r .progress.step "$D/jobs/$J/job.json")
start_server "$D" --workers 2 "${SLURM_FLAGS[@]}" || bad restart "$(cat "$D.err")"
for _ in $(seq 100); do
    [ "$(curl -s "$URL/v1/jobs/$J" | jq -r .progress.step)" -gt "$step_before" ] 2>/dev/null && break
    sleep 0.2
done
curl -s "$URL/v1/jobs/$J" >"$TMP/job"
check restart_reattaches_same_slurm_job '[ "$(jq -r .state "$TMP/job")" = running ] && [ "$(jq -r .slurm.job_id "$TMP/job")" = "$SID" ] && [ "$(jq .attempts "$TMP/job")" = 1 ] && [ "$(jq .progress.step "$TMP/job")" -gt "$step_before" ]' "$(jq -c '{state,attempts,slurm,progress}' "$TMP/job"), step before $step_before"
check restart_no_second_copy '[ "$(squeue -h -t all -n "quantd-$J" -o %i | wc -l)" = 1 ]' "$(squeue -h -t all -n "quantd-$J")"
check restart_reattach_event 'grep -q "following Slurm job $SID again" "$D/jobs/$J/events.jsonl"'
code POST "/v1/jobs/$J/cancel" >/dev/null
wait_state "$J" "cancelled|failed" 60
check reattached_job_cancels '[ "$(job_state "$J")" = cancelled ]' "$(job_brief "$J")"

# --- a server stopped by SIGTERM leaves its Slurm jobs running; the next one follows them
J=$(submit "{$IN,\"method\":\"mobilequant\",$LONG}")
wait_optimizing "$J" 120
SID=$(slurm_id "$J")
stop_server
check stop_leaves_slurm_job_running '[ "$(squeue -h -j "$SID" -o %T)" = RUNNING ] && [ "$(jq -r .state "$D/jobs/$J/job.json")" = running ]' "$(squeue -h -j "$SID" -o %T) $(jq -c '{state,slurm}' "$D/jobs/$J/job.json")"
start_server "$D" --workers 2 "${SLURM_FLAGS[@]}" || bad restart_after_stop "$(cat "$D.err")"
check restart_after_stop_follows '[ "$(job_state "$J")" = running ] && [ "$(slurm_id "$J")" = "$SID" ]' "$(job_brief "$J")"
code POST "/v1/jobs/$J/cancel" >/dev/null
wait_state "$J" "cancelled|failed" 60

# --- a job that finishes while the server is down is picked up as finished
J=$(submit "{$IN,\"method\":\"rtn\",$SMALL}")
for _ in $(seq 150); do SID=$(slurm_id "$J"); [ -n "$SID" ] && break; sleep 0.1; done
kill -KILL "$SPID"; wait "$SPID" 2>/dev/null; SPID=
wait_slurm_state "$SID" "COMPLETED|FAILED" 120
start_server "$D" --workers 2 "${SLURM_FLAGS[@]}" || bad restart2 "$(cat "$D.err")"
wait_state "$J" "succeeded|failed|queued" 60
curl -s "$URL/v1/jobs/$J" >"$TMP/job"
check finished_while_down_succeeds '[ "$(jq -r .state "$TMP/job")" = succeeded ] && [ "$(jq .attempts "$TMP/job")" = 1 ] && [ "$(jq -r .slurm.job_id "$TMP/job")" = "$SID" ]' "$(jq -c '{state,attempts,slurm,error}' "$TMP/job")"

# --- a Slurm job that vanished while the server was down: requeued, resumes from its checkpoint
J=$(submit "{$IN,\"method\":\"mobilequant\",$RESUME}")
wait_optimizing "$J" 120
SID=$(slurm_id "$J")
kill -KILL "$SPID"; wait "$SPID" 2>/dev/null; SPID=
scancel --batch --signal=TERM "$SID"
wait_slurm_state "$SID" "FAILED|CANCELLED|COMPLETED" 60
jq '.slurm.job_id = "999999"' "$D/jobs/$J/job.json" >"$TMP/jj" && cp "$TMP/jj" "$D/jobs/$J/job.json"
start_server "$D" --workers 2 "${SLURM_FLAGS[@]}" || bad restart3 "$(cat "$D.err")"
wait_state "$J" "succeeded|failed|timed_out|cancelled" 180
curl -s "$URL/v1/jobs/$J" >"$TMP/job"
check vanished_job_requeued 'grep -q "Slurm no longer knows job 999999.*requeued to resume from its checkpoint" "$D/jobs/$J/events.jsonl"' "$(grep '"state"' "$D/jobs/$J/events.jsonl" | tail -4)"
check vanished_job_resumes_and_succeeds '[ "$(jq -r .state "$TMP/job")" = succeeded ] && [ "$(jq .attempts "$TMP/job")" = 2 ] && [ "$(jq -r .slurm.job_id "$TMP/job")" != 999999 ] && grep -q "resuming from checkpoint" "$D/jobs/$J/worker.log"' "$(jq -c '{state,attempts,slurm,error}' "$TMP/job")"

# --- Slurm's own time limit (the job of the second server, --time=1)
side_wait "$TURL" "$TJ" 180
curl -s "$TURL/v1/jobs/$TJ" >"$TMP/job"
check slurm_time_limit_times_out '[ "$(jq -r .state "$TMP/job")" = timed_out ] && [ "$(jq -r .slurm.state "$TMP/job")" = TIMEOUT ] && jq -r .error "$TMP/job" | grep -q "TIMEOUT"' "$(jq -c '{state,error,slurm}' "$TMP/job")"

# --- Slurm's memory limit (the job of the third server, --mem=8M)
side_wait "$OURL" "$OJ" 60
curl -s "$OURL/v1/jobs/$OJ" >"$TMP/job"
check slurm_memory_limit_fails_job '[ "$(jq -r .state "$TMP/job")" = failed ] && jq -r .error "$TMP/job" | grep -q "memory limit (--mem=8M)"' "$(jq -c '{state,error,slurm,worker}' "$TMP/job")"

# --- the node goes down under a running job: the job fails with the node's reason
J=$(submit "{$IN,\"method\":\"mobilequant\",$LONG}")
wait_optimizing "$J" 120
scontrol update nodename="$SLURM_NODE" state=down reason="e2e: node pulled"
wait_state "$J" "failed|succeeded|cancelled" 60
curl -s "$URL/v1/jobs/$J" >"$TMP/job"
check node_down_fails_with_reason '[ "$(jq -r .state "$TMP/job")" = failed ] && jq -r .error "$TMP/job" | grep -q NODE_FAIL && jq -r .error "$TMP/job" | grep -q "e2e: node pulled"' "$(jq -c '{state,error,slurm}' "$TMP/job")"
scontrol update nodename="$SLURM_NODE" state=resume
slurm_wait_idle 60 || bad node_resume "$(sinfo -N 2>&1)"

# --- a drained node: a job pending on it fails after slurm_pending_down_s with the reason
scontrol update nodename="$SLURM_NODE" state=drain reason="e2e: maintenance"
J=$(submit "{$IN,\"method\":\"rtn\",$SMALL}")
wait_state "$J" "failed|succeeded" 60
curl -s "$URL/v1/jobs/$J" >"$TMP/job"
check drained_node_fails_with_reason '[ "$(jq -r .state "$TMP/job")" = failed ] && jq -r .error "$TMP/job" | grep -q "e2e: maintenance"' "$(jq -c '{state,error,slurm}' "$TMP/job")"
scontrol update nodename="$SLURM_NODE" state=resume
stop_server
