#!/usr/bin/env bash
# Jobs end to end through the real pipeline: upload stories260K and the TinyStories excerpt,
# run an RTN job and a small MobileQuant job to success following SSE, download the report and
# artifacts (ETag, Range), a multipart submission, then the hard cases: two jobs queued behind
# one worker, cancel, timeout, a worker killed mid-job, kill -9 of the server followed by a
# restart that finishes the job, and progress persisted while a job runs with its timeout
# counting the time of earlier attempts across a restart. max_attempts=1: a killed worker fails
# its job at once (its retries are e2e_stop.sh's).
set -u
. "$(dirname "$0")/e2e_common.inc"
if ! "$Q" work --help >/dev/null 2>&1; then
    echo "SKIP e2e_serve_jobs: this quantd has no 'work' command (the pipeline is not linked in)"
    exit 0
fi

# budgets: SMALL finishes in seconds; LONG keeps the optimizer busy until we act on it
SMALL='"budget":{"samples":4,"seq_len":64,"epochs":1}'
LONG='"budget":{"samples":64,"seq_len":64,"epochs":1000}'
RESUME='"budget":{"samples":8,"seq_len":64,"epochs":40}'

D=$TMP/data
start_server "$D" --workers 1 --set cancel_grace_s=3 --set max_attempts=1 || { bad start "$(cat "$D.err")"; exit 1; }
MID=$(upload "$MODEL")
CID=$(upload "$TEXT")
check uploads '[ "${MID#sha256:}" != "$MID" ] && [ "${CID#sha256:}" != "$CID" ]'
IN="\"model\":\"$MID\",\"calibration\":\"$CID\""

# --- RTN to success, followed over SSE
J=$(submit "{$IN,\"method\":\"rtn\",$SMALL,\"gates\":{\"max_ppl_increase\":10}}")
check rtn_submitted '[ -n "$J" ]' "$(body)"
timeout 180 curl -sN "$URL/v1/jobs/$J/events" >"$TMP/sse" 2>/dev/null
last_state=$(grep '^data: ' "$TMP/sse" | sed 's/^data: //' | jq -r 'select(.type=="state") | .state' | tail -1)
check rtn_sse_ends_succeeded '[ "$last_state" = succeeded ]' "last state '$last_state'; $(tail -c 600 "$D/jobs/$J/worker.log" 2>/dev/null)"
check sse_has_ids '[ "$(grep -c "^id: " "$TMP/sse")" -ge 3 ] && grep -q "^event: state" "$TMP/sse"'
check sse_has_progress 'grep -q "^event: progress" "$TMP/sse"'
n=$(grep -c '^id: ' "$TMP/sse")
timeout 10 curl -sN -H "Last-Event-ID: $((n - 1))" "$URL/v1/jobs/$J/events" >"$TMP/sse2"
check sse_last_event_id_query '[ "$(timeout 10 curl -sN "$URL/v1/jobs/$J/events?last_event_id=$((n - 2))" | grep -c "^id: ")" = 2 ]'
check sse_bad_last_event_id_400 '[ "$(code GET "/v1/jobs/$J/events" -H "Last-Event-ID: x")" = 400 ]'
check sse_last_event_id '[ "$(grep -c "^id: " "$TMP/sse2")" = 1 ] && grep -q "^id: $n\$" "$TMP/sse2"'
curl -s "$URL/v1/jobs/$J" >"$TMP/job"
check rtn_job_succeeded '[ "$(jq -r .state "$TMP/job")" = succeeded ] && [ "$(jq -r .worker.exit_code "$TMP/job")" = 0 ]'
check rtn_result_lists_artifacts '[ "$(jq "[.result.artifacts[].name] | index(\"report.json\") != null" "$TMP/job")" = true ]'
check report_200_json '[ "$(code GET "/v1/jobs/$J/report")" = 200 ] && jq -e ".eval.fp32.ppl > 0" "$TMP/body" >/dev/null' "$(head -c 400 "$TMP/body")"
check report_has_rtn 'jq -e "(.eval.rtn.ppl > 0) and (.size.ratio > 1)" "$TMP/body" >/dev/null'
check report_has_int_runtime 'jq -e ".eval.int.ppl > 0" "$TMP/body" >/dev/null' "report.eval has $(jq -c '.eval | keys' "$TMP/body")"
check report_inputs_named_as_fields 'jq -e "(.inputs.model == \"model\") and (.inputs.calibration == \"calibration\")" "$TMP/body" >/dev/null' "inputs: $(jq -c .inputs "$TMP/body")"
etag=$(curl -s -D - -o /dev/null "$URL/v1/jobs/$J/report" | tr -d '\r' | sed -n 's/^[Ee][Tt]ag: //p')
check report_etag_304 '[ -n "$etag" ] && [ "$(code GET "/v1/jobs/$J/report" -H "If-None-Match: $etag")" = 304 ]'
art=$(jq -r '.result.artifacts | max_by(.size) | .name' "$TMP/job")
size=$(jq -r ".result.artifacts[] | select(.name == \"$art\") | .size" "$TMP/job")
check artifact_download '[ "$(code GET "/v1/jobs/$J/artifacts/$art")" = 200 ] && [ "$(stat -c %s "$TMP/body")" = "$size" ] && cmp -s "$TMP/body" "$D/jobs/$J/artifacts/$art"' "$art $size"
check artifact_range_206 '[ "$(code GET "/v1/jobs/$J/artifacts/$art" -r 100-199)" = 206 ] && [ "$(stat -c %s "$TMP/body")" = 100 ] && cmp -s "$TMP/body" <(tail -c +101 "$D/jobs/$J/artifacts/$art" | head -c 100)'
check artifact_range_suffix '[ "$(code GET "/v1/jobs/$J/artifacts/$art" -r -100)" = 206 ] && cmp -s "$TMP/body" <(tail -c 100 "$D/jobs/$J/artifacts/$art")'
check artifact_if_range_stale_200 '[ "$(code GET "/v1/jobs/$J/artifacts/$art" -r 0-9 -H "If-Range: \"stale\"")" = 200 ] && [ "$(stat -c %s "$TMP/body")" = "$size" ]'
check artifact_multirange_whole '[ "$(code GET "/v1/jobs/$J/artifacts/$art" -r 0-9,20-29)" = 200 ] && [ "$(stat -c %s "$TMP/body")" = "$size" ]'
check artifact_head '[ "$(curl -s -I "$URL/v1/jobs/$J/artifacts/$art" | tr -d "\r" | sed -n "s/^[Cc]ontent-[Ll]ength: //p")" = "$size" ]'
check artifact_range_416 '[ "$(code GET "/v1/jobs/$J/artifacts/$art" -H "Range: bytes=$((size + 10))-")" = 416 ]'
check artifact_list '[ "$(code GET "/v1/jobs/$J/artifacts")" = 200 ] && [ "$(jq ".artifacts | length" "$TMP/body")" = "$(jq ".result.artifacts | length" "$TMP/job")" ]'
check artifact_model_exported 'jq -e ".result.artifacts | map(.name) | index(\"model.qint.safetensors\") != null" "$TMP/job" >/dev/null' "artifacts: $(jq -c "[.result.artifacts[].name]" "$TMP/job")"

# --- MobileQuant, tiny budget, submitted as multipart/form-data: the files travel with the
# spec (already stored here, so deduplicated) and the spec names one part itself
J=$(curl -s -F "model=@$MODEL" -F "text=@$TEXT" -F "spec={\"calibration\":\"text\",\"method\":\"mobilequant\",$SMALL}" \
    "$URL/v1/jobs" | tee "$TMP/body" | jq -r '.id // empty')
check multipart_submitted '[ -n "$J" ] && [ "$(jq -r .spec.model "$TMP/body")" = "$MID" ] && [ "$(jq -r .spec.calibration "$TMP/body")" = "$CID" ]' "$(body)"
wait_state "$J" "succeeded|failed|timed_out" 180
check mobilequant_succeeded '[ "$(job_state "$J")" = succeeded ]' "$(curl -s "$URL/v1/jobs/$J" | jq -c '{state,error,log_tail}')"
check mobilequant_report '[ "$(code GET "/v1/jobs/$J/report")" = 200 ] && jq -e ".eval.mobilequant.ppl > 0" "$TMP/body" >/dev/null'

# --- two jobs behind one worker: FIFO
A=$(submit "{$IN,\"method\":\"rtn\",$SMALL,\"labels\":{\"k\":\"a\"}}")
B=$(submit "{$IN,\"method\":\"rtn\",$SMALL,\"labels\":{\"k\":\"b\"},\"encodings_version\":\"0.6.1\"}")
check second_job_waits '[ "$(curl -s "$URL/v1/jobs/$B" | jq -r "[.state, .queue_position] | @tsv")" = "$(printf "queued\t0")" ]'
wait_state "$B" "succeeded|failed" 180
check both_succeed '[ "$(job_state "$A")" = succeeded ] && [ "$(job_state "$B")" = succeeded ]'
fa=$(curl -s "$URL/v1/jobs/$A" | jq -r .finished_at); sb=$(curl -s "$URL/v1/jobs/$B" | jq -r .started_at)
check fifo_one_at_a_time '[[ "$sb" > "$fa" || "$sb" == "$fa" ]]' "A finished $fa, B started $sb"
check job_encodings_0_6_1 '[ "$(code GET "/v1/jobs/$B/artifacts/encodings.json")" = 200 ] && jq -e ".version == \"0.6.1\"" "$TMP/body" >/dev/null && jq -e ".version == \"1.0.0\"" "$D/jobs/$A/artifacts/encodings.json" >/dev/null' "$(head -c 200 "$TMP/body")"

# --- cancel a running job
J=$(submit "{$IN,\"method\":\"mobilequant\",$LONG}")
wait_optimizing "$J" 120
check cancel_202 '[ "$(code POST "/v1/jobs/$J/cancel")" = 202 ] && [ "$(jq -r .cancel_requested "$TMP/body")" = true ]'
wait_state "$J" "cancelled|failed|succeeded" 30
check cancelled '[ "$(job_state "$J")" = cancelled ]'
check cancel_frees_slot '[ "$(curl -s "$URL/healthz" | jq .workers_busy)" = 0 ]'

# --- a queued job cancelled before it starts
A=$(submit "{$IN,\"method\":\"mobilequant\",$LONG}")
B=$(submit "{$IN,\"method\":\"rtn\",$SMALL}")
check cancel_queued '[ "$(code POST "/v1/jobs/$B/cancel")" = 202 ] && [ "$(job_state "$B")" = cancelled ]'
code POST "/v1/jobs/$A/cancel" >/dev/null
wait_state "$A" "cancelled|failed" 30

# --- a job that fails in the worker (its calibration blob damaged on disk after the door
# accepted it): the job's error is the pipeline's own reason, naming the field as the user
# knows it, never the server's path of the blob
A=$(submit "{$IN,\"method\":\"mobilequant\",$LONG}")
wait_optimizing "$A" 120
{ cat "$TEXT"; echo "One more line that only this job's calibration has."; } >"$TMP/calib2.txt"
C2=$(upload "$TMP/calib2.txt")
B=$(submit "{\"model\":\"$MID\",\"calibration\":\"$C2\",\"method\":\"rtn\",$SMALL}")
check damaged_job_accepted '[ -n "$B" ] && [ "$(job_state "$B")" = queued ]' "$(body)"
head -c 30000 /dev/urandom >"$D/blobs/sha256/${C2#sha256:}"
code POST "/v1/jobs/$A/cancel" >/dev/null
wait_state "$B" "failed|succeeded" 90
curl -s "$URL/v1/jobs/$B" >"$TMP/job"
reason=$(jq -r .error "$TMP/job")
check worker_reason_is_headline '[ "$(jq -r .state "$TMP/job")" = failed ] && [ "$(jq -r .worker.exit_code "$TMP/job")" != 0 ] && printf %s "$reason" | grep -q "^calibration" && ! printf %s "$reason" | grep -q "exited with status"' "$(jq -c '{state,error,worker}' "$TMP/job")"
check worker_reason_no_server_path '! printf %s "$reason" | grep -q -e "$D" -e "blobs/sha256"' "$reason"

# --- timeout
J=$(submit "{$IN,\"method\":\"mobilequant\",$LONG,\"timeout_s\":3}")
wait_state "$J" "timed_out|failed|succeeded" 60
check timed_out '[ "$(job_state "$J")" = timed_out ] && curl -s "$URL/v1/jobs/$J" | jq -r .error | grep -q timeout'

# --- a worker killed mid-job
J=$(submit "{$IN,\"method\":\"mobilequant\",$LONG}")
wait_optimizing "$J" 120
wp=$(curl -s "$URL/v1/jobs/$J" | jq .worker.pid)
kill -KILL "$wp"
wait_state "$J" "failed|succeeded|cancelled" 30
curl -s "$URL/v1/jobs/$J" >"$TMP/job"
check killed_worker_fails '[ "$(jq -r .state "$TMP/job")" = failed ] && [ "$(jq -r .worker.signal "$TMP/job")" = 9 ] && jq -r .error "$TMP/job" | grep -q "signal 9"' "$(jq -c '{state,worker,error}' "$TMP/job")"
check killed_worker_log_tail '[ -n "$(jq -r ".log_tail // empty" "$TMP/job")" ]'

# --- kill -9 of the server while a job runs; a restarted server finishes it
J=$(submit "{$IN,\"method\":\"mobilequant\",$RESUME}")
wait_optimizing "$J" 120
# a checkpoint on disk first (every 20 steps): a stop that lands in the first held-out
# selection pass, before any checkpoint, leaves nothing to resume from
for _ in $(seq 600); do [ -s "$D/jobs/$J/checkpoint" ] && break; sleep 0.1; done
kill -KILL "$SPID"; wait "$SPID" 2>/dev/null; SPID=
start_server "$D" --workers 1 --set cancel_grace_s=3 --set max_attempts=1 || bad restart "$(cat "$D.err")"
check restart_keeps_blobs '[ -f "$D/blobs/sha256/${MID#sha256:}" ] && [ -f "$D/blobs/sha256/${CID#sha256:}" ]'
check restart_keeps_jobs '[ "$(curl -s "$URL/v1/jobs?limit=500" | jq .total)" -ge 9 ]'
wait_state "$J" "succeeded|failed|timed_out" 180
curl -s "$URL/v1/jobs/$J" >"$TMP/job"
check restarted_job_succeeds '[ "$(jq -r .state "$TMP/job")" = succeeded ] && [ "$(jq .attempts "$TMP/job")" -ge 2 ]' "$(jq -c '{state,attempts,error,log_tail}' "$TMP/job")"
check restart_requeue_event 'grep -q "server restarted" "$D/jobs/$J/events.jsonl"'
check restart_resumed_from_checkpoint 'grep -q "resuming from checkpoint" "$D/jobs/$J/worker.log"' "$(cat "$D/jobs/$J/worker.log")"
check metrics_jobs_by_state 'curl -s "$URL/metrics" | grep -q "^quantd_jobs{state=\"succeeded\"} [1-9]"'

# --- job.json follows a running job's progress (about once a second), and timeout_s bounds
# the time of all attempts together: after kill -9 and a restart the job times out on time
# timeout_s leaves room for a slow first step on a loaded machine: the checks below are about
# what is recorded, not how fast the worker is.
TO=30
J=$(submit "{$IN,\"method\":\"mobilequant\",$LONG,\"timeout_s\":$TO}")
wait_optimizing "$J" 120
for _ in $(seq 600); do
    jq -e '.progress.phase == "optimize" and .progress.step >= 1 and .run_s >= 4' "$D/jobs/$J/job.json" >/dev/null 2>&1 && break
    sleep 0.1
done
jq . "$D/jobs/$J/job.json" >"$TMP/ondisk"
check progress_persisted_while_running 'jq -e ".state == \"running\" and .progress.phase == \"optimize\" and .progress.step >= 1 and .progress.loss != null and .run_s >= 4" "$TMP/ondisk" >/dev/null' "$(jq -c '{state,progress,run_s}' "$TMP/ondisk")"
kill -KILL "$SPID"; wait "$SPID" 2>/dev/null; SPID=
sleep 0.3
# what a restarted server will show is at most about a second behind the worker's last report
last=$(grep '"type":"progress"' "$D/jobs/$J/events.jsonl" | tail -1)
check progress_on_disk_is_recent 'jq -e --argjson ev "$last" ".progress.phase == \$ev.phase and (\$ev.elapsed_s - .progress.elapsed_s) < 2" "$D/jobs/$J/job.json" >/dev/null' "job.json: $(jq -c .progress "$D/jobs/$J/job.json"); last event: $last"
start_server "$D" --workers 1 --set cancel_grace_s=3 --set max_attempts=1 || bad restart2 "$(cat "$D.err")"
t0=$SECONDS
wait_state "$J" "timed_out|failed|succeeded" $((TO + 60))
took=$((SECONDS - t0))
curl -s "$URL/v1/jobs/$J" >"$TMP/job"
check timeout_counts_earlier_attempts '[ "$(jq -r .state "$TMP/job")" = timed_out ] && [ "$(jq .attempts "$TMP/job")" = 2 ] && [ "$took" -lt $TO ] && jq -e --argjson to $TO ".run_s >= \$to - 1 and .run_s < \$to + 5" "$TMP/job" >/dev/null' "$(jq -c '{state,attempts,run_s,error}' "$TMP/job"), ${took}s after the restart"
stop_server
