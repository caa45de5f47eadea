#!/usr/bin/env bash
# The service's HTTP surface without running the pipeline: health, the spec, uploads
# (dedup, 413, 415, interrupted), blob lookups (GET/HEAD /v1/blobs/{id}), the bad-input
# catalogue of POST /v1/jobs (400, 415, 422 with the field named), multipart job submission
# (parts streamed into blobs, named by the spec, refused requests leave no blob), path tricks,
# 404/405, listing, the Prometheus exposition, big uploads with flat server memory, the per-IP
# connection limit, 507 on a short disk (min_free_bytes), and auth (401/403, and the refusal to
# listen on a non-loopback address without tokens).
set -u
. "$(dirname "$0")/e2e_common.inc"

D=$TMP/data
start_server "$D" --set max_upload_bytes=2M --set max_queue=3 || { bad start "$(cat "$D.err")"; exit 1; }
ok start

check healthz '[ "$(code GET /healthz)" = 200 ] && [ "$(jq -r .status "$TMP/body")" = ok ]'
check openapi_served '[ "$(code GET /v1/openapi.yaml)" = 200 ] && cmp -s "$TMP/body" api/openapi.yaml'
check dashboard '[ "$(code GET /)" = 200 ] && grep -q quantd "$TMP/body"'
check unknown_path_404 '[ "$(code GET /v2/nothing)" = 404 ] && [ "$(err_code)" = not_found ]'
check wrong_method_405 '[ "$(code PUT /v1/jobs)" = 405 ] && [ "$(err_code)" = method_not_allowed ]'

# uploads: content-addressed, deduplicated
MID=$(upload "$MODEL")
want="sha256:$(sha256sum "$MODEL" | cut -d' ' -f1)"
check upload_id_is_sha256 '[ "$MID" = "$want" ]' "got $MID want $want"
check upload_stored '[ -f "$D/blobs/sha256/${want#sha256:}" ] && cmp -s "$MODEL" "$D/blobs/sha256/${want#sha256:}"'
check upload_again_200 '[ "$(code POST /v1/blobs -H "Content-Type: application/octet-stream" --data-binary @"$MODEL")" = 200 ] && [ "$(jq -r .id "$TMP/body")" = "$MID" ]'
CID=$(upload "$TEXT")
check upload_wrong_type_415 '[ "$(code POST /v1/blobs -H "Content-Type: text/plain" --data-binary @"$TEXT")" = 415 ] && [ "$(err_code)" = unsupported_media_type ]'
check upload_form_415 '[ "$(code POST /v1/blobs --data-binary @"$TEXT")" = 415 ]'
head -c 3000000 /dev/urandom >"$TMP/big"
check upload_oversize_413 '[ "$(code POST /v1/blobs -H "Content-Type: application/octet-stream" --data-binary @"$TMP/big")" = 413 ] && [ "$(err_code)" = payload_too_large ]'
check upload_oversize_chunked_413 '[ "$(code POST /v1/blobs -H "Content-Type: application/octet-stream" -H "Transfer-Encoding: chunked" --data-binary @"$TMP/big")" = 413 ]'
check oversize_leaves_nothing '[ -z "$(ls "$D/blobs/tmp")" ] && [ $(ls "$D/blobs/sha256" | wc -l) = 2 ]'
# an upload cut off half-way leaves no blob and no temp file
head -c 1500000 /dev/urandom >"$TMP/half"
curl -s -H 'Content-Type: application/octet-stream' -H 'Content-Length: 1500000' --limit-rate 200K \
    --data-binary @"$TMP/half" "$URL/v1/blobs" >/dev/null 2>&1 &
cp=$!
sleep 1.2
kill -KILL $cp 2>/dev/null; wait $cp 2>/dev/null
sleep 0.5
check interrupted_upload_leaves_nothing '[ -z "$(ls "$D/blobs/tmp")" ] && [ $(ls "$D/blobs/sha256" | wc -l) = 2 ]' "$(ls "$D/blobs/tmp" "$D/blobs/sha256")"

# asking for a blob before uploading it: GET and HEAD /v1/blobs/{id}
check blob_get_200 '[ "$(code GET "/v1/blobs/$MID")" = 200 ] && [ "$(jq -r .id "$TMP/body")" = "$MID" ] && [ "$(jq .size "$TMP/body")" = "$(stat -c %s "$MODEL")" ]' "$(body)"
check blob_head_200 '[ "$(curl -s -o /dev/null -w "%{http_code}" -I "$URL/v1/blobs/$MID")" = 200 ]'
check blob_head_404 '[ "$(curl -s -o /dev/null -w "%{http_code}" -I "$URL/v1/blobs/sha256:$(printf "%064d" 0)")" = 404 ]'
check blob_get_404 '[ "$(code GET "/v1/blobs/sha256:$(printf "%064d" 0)")" = 404 ] && [ "$(err_code)" = not_found ]'
check blob_get_bad_id_400 '[ "$(code GET "/v1/blobs/sha256:xyz")" = 400 ] && [ "$(err_field)" = id ]'
check blob_get_dotdot_404 '[ "$(code GET "/v1/blobs/sha256:..%2f..%2flock")" = 404 ] && [ "$(code GET "/v1/blobs/../lock" --path-as-is)" = 404 ]'
check blob_post_to_id_405 '[ "$(code POST "/v1/blobs/$MID" -H "Content-Type: application/octet-stream" -d x)" = 405 ]'

# the bad-input catalogue of POST /v1/jobs
GOOD="\"model\":\"$MID\",\"calibration\":\"$CID\""
jpost() { code POST /v1/jobs -H 'Content-Type: application/json' -d "$1"; }
check job_malformed_json_400 '[ "$(jpost "{\"model\": ")" = 400 ] && [ "$(err_code)" = invalid_json ]'
check job_trailing_garbage_400 '[ "$(jpost "{$GOOD} x")" = 400 ]'
check job_empty_body_400 '[ "$(code POST /v1/jobs -H "Content-Type: application/json")" = 400 ]'
check job_wrong_type_415 '[ "$(code POST /v1/jobs -H "Content-Type: text/plain" -d "{$GOOD}")" = 415 ]'
check job_unknown_field_422 '[ "$(jpost "{$GOOD,\"epochs\":3}")" = 422 ] && [ "$(err_field)" = epochs ] && [ "$(err_code)" = unknown_field ]'
check job_unknown_nested_field_422 '[ "$(jpost "{$GOOD,\"budget\":{\"sample\":3}}")" = 422 ] && [ "$(err_field)" = budget.sample ]'
check job_missing_model_422 '[ "$(jpost "{\"calibration\":\"$CID\"}")" = 422 ] && [ "$(err_field)" = model ] && [ "$(err_code)" = required ]'
nob=sha256:$(printf '%064d' 0)
check job_missing_blob_422 '[ "$(jpost "{\"model\":\"$nob\",\"calibration\":\"$CID\"}")" = 422 ] && [ "$(err_field)" = model ] && [ "$(err_code)" = blob_not_found ]'
check job_missing_eval_blob_422 '[ "$(jpost "{$GOOD,\"eval\":\"$nob\"}")" = 422 ] && [ "$(err_field)" = eval ]'
check job_wrong_method_422 '[ "$(jpost "{$GOOD,\"method\":\"gptq\"}")" = 422 ] && [ "$(err_field)" = method ]'
check job_bad_wbits_422 '[ "$(jpost "{$GOOD,\"wbits\":3}")" = 422 ] && [ "$(err_field)" = wbits ]'
check job_bad_encodings_version_422 '[ "$(jpost "{$GOOD,\"encodings_version\":\"2.0\"}")" = 422 ] && [ "$(err_field)" = encodings_version ] && [ "$(err_code)" = invalid_value ]'
check job_budget_range_422 '[ "$(jpost "{$GOOD,\"budget\":{\"samples\":-4}}")" = 422 ] && [ "$(err_field)" = budget.samples ]'
check job_path_in_blob_id_422 '[ "$(jpost "{\"model\":\"sha256:../../../etc/passwd\",\"calibration\":\"$CID\"}")" = 422 ] && [ "$(err_field)" = model ]'
check job_threads_over_server_limit_422 '[ "$(jpost "{$GOOD,\"threads\":200}")" = 422 ] && [ "$(err_field)" = threads ]'
python3 -c 'print("{\"labels\":{\"x\":\"" + "a"*1100000 + "\"}}")' >"$TMP/huge.json" 2>/dev/null || head -c 1100000 /dev/zero | tr '\0' a >"$TMP/huge.json"
check job_body_too_large_413 '[ "$(code POST /v1/jobs -H "Content-Type: application/json" --data-binary @"$TMP/huge.json")" = 413 ]'
check no_job_created_by_bad_input '[ "$(curl -s "$URL/v1/jobs" | jq .total)" = 0 ] && [ $(ls "$D/jobs" | grep -vc "^\.tmp$") = 0 ]'

# multipart POST /v1/jobs: the files and a spec part in one request
nblobs() { ls "$D/blobs/sha256" | wc -l; }
TINY='"method":"rtn","budget":{"samples":2,"seq_len":16,"epochs":0}'
mpost() { code POST /v1/jobs "$@"; }
head -c 5000 /dev/urandom >"$TMP/fresh1"; head -c 6000 /dev/urandom >"$TMP/fresh2"
n0=$(nblobs)
check mp_bad_spec_422 '[ "$(mpost -F model=@"$TMP/fresh1" -F calibration=@"$TEXT" -F "spec={\"wbits\":3}")" = 422 ] && [ "$(err_field)" = wbits ]'
check mp_refused_leaves_no_blob '[ "$(nblobs)" = "$n0" ] && [ -z "$(ls "$D/blobs/tmp")" ]'
check mp_spec_not_json_400 '[ "$(mpost -F model=@"$TMP/fresh1" -F calibration=@"$TEXT" -F "spec={\"wbits\":")" = 400 ] && [ "$(err_code)" = invalid_json ] && [ "$(err_field)" = spec ]'
check mp_unused_part_422 '[ "$(mpost -F model=@"$TMP/fresh1" -F calibration=@"$TEXT" -F calibraton=@"$TMP/fresh2" -F "spec={$TINY}")" = 422 ] && [ "$(err_code)" = unknown_field ] && [ "$(err_field)" = calibraton ]'
check mp_names_missing_part_422 '[ "$(mpost -F model=@"$TMP/fresh1" -F calibration=@"$TEXT" -F "spec={\"eval\":\"heldout\"}")" = 422 ] && [ "$(err_field)" = eval ]'
check mp_missing_part_422 '[ "$(mpost -F model=@"$TMP/fresh1" -F "spec={$TINY}")" = 422 ] && [ "$(err_field)" = calibration ] && [ "$(err_code)" = required ]'
check mp_duplicate_part_400 '[ "$(mpost -F model=@"$TMP/fresh1" -F model=@"$TMP/fresh2" -F calibration=@"$TEXT")" = 400 ] && [ "$(err_code)" = invalid_multipart ]'
check mp_bad_part_name_400 '[ "$(mpost -F "../x=@$TMP/fresh1" -F calibration=@"$TEXT")" = 400 ] && [ "$(err_code)" = invalid_multipart ]'
check mp_oversize_part_413 '[ "$(mpost -F model=@"$TMP/big" -F calibration=@"$TEXT")" = 413 ] && [ "$(err_field)" = model ]'
check mp_oversize_chunked_413 '[ "$(mpost -H "Transfer-Encoding: chunked" -F calibration=@"$TEXT" -F model=@"$TMP/big")" = 413 ]'
check mp_no_boundary_400 '[ "$(mpost -H "Content-Type: multipart/form-data" --data-binary @"$TEXT")" = 400 ] && [ "$(err_field)" = Content-Type ]'
printf -- '--qd\r\nContent-Disposition: form-data; name="model"; filename="m"\r\n\r\nhalf a model' >"$TMP/cut"
check mp_cut_short_400 '[ "$(mpost -H "Content-Type: multipart/form-data; boundary=qd" --data-binary @"$TMP/cut")" = 400 ] && [ "$(err_code)" = invalid_multipart ]'
# a multipart upload interrupted half-way: no blob, no temp file
curl -s --limit-rate 200K -F calibration=@"$TEXT" -F model=@"$TMP/half" "$URL/v1/jobs" >/dev/null 2>&1 &
cp=$!
sleep 1.2
kill -KILL $cp 2>/dev/null; wait $cp 2>/dev/null
sleep 0.5
check mp_errors_leave_nothing '[ "$(nblobs)" = "$n0" ] && [ -z "$(ls "$D/blobs/tmp")" ] && [ "$(curl -s "$URL/v1/jobs" | jq .total)" = 0 ]' "$(ls "$D/blobs/tmp" "$D/blobs/sha256")"
# accepted: parts named after the fields, and parts named by the spec
check mp_submit_201 '[ "$(mpost -F model=@"$MODEL" -F calibration=@"$TEXT" -F "spec={$TINY,\"labels\":{\"via\":\"multipart\"}}")" = 201 ] && [ "$(jq -r .spec.model "$TMP/body")" = "$MID" ] && [ "$(jq -r .spec.calibration "$TMP/body")" = "$CID" ] && [ "$(jq -r .spec.labels.via "$TMP/body")" = multipart ]' "$(body)"
MPJ=$(jq -r .id "$TMP/body")
check mp_job_stored '[ -f "$D/jobs/$MPJ/job.json" ] && [ "$(nblobs)" = "$n0" ]'
check mp_parts_named_by_spec '[ "$(mpost -F weights=@"$TMP/fresh1" -F text=@"$TMP/fresh2" -F "spec={\"model\":\"weights\",\"calibration\":\"text\",$TINY}")" = 201 ] && [ "$(jq -r .spec.model "$TMP/body")" = "sha256:$(sha256sum "$TMP/fresh1" | cut -d" " -f1)" ] && [ "$(jq -r .spec.calibration "$TMP/body")" = "sha256:$(sha256sum "$TMP/fresh2" | cut -d" " -f1)" ]' "$(body)"
check mp_parts_stored_as_blobs '[ "$(nblobs)" = $((n0 + 2)) ] && cmp -s "$TMP/fresh1" "$D/blobs/sha256/$(sha256sum "$TMP/fresh1" | cut -d" " -f1)" && [ "$(code GET "/v1/blobs/sha256:$(sha256sum "$TMP/fresh2" | cut -d" " -f1)")" = 200 ]'
check mp_spec_part_optional '[ "$(mpost -F model=@"$MODEL" -F calibration=@"$TEXT")" = 201 ] && [ "$(jq -r .spec.method "$TMP/body")" = mobilequant ]' "$(body)"
for id in $(curl -s "$URL/v1/jobs?limit=500" | jq -r '.jobs[].id'); do
    code POST "/v1/jobs/$id/cancel" >/dev/null
    wait_state "$id" "succeeded|failed|cancelled" 60 && code DELETE "/v1/jobs/$id" >/dev/null
done

# lookups and path tricks
check job_not_uuid_404 '[ "$(code GET /v1/jobs/not-a-job)" = 404 ]'
check job_unknown_uuid_404 '[ "$(code GET /v1/jobs/00000000-0000-4000-8000-000000000000)" = 404 ]'
check dotdot_path_404 '[ "$(code GET /v1/jobs/../../lock --path-as-is)" = 404 ]'
check list_bad_limit_422 '[ "$(code GET "/v1/jobs?limit=0")" = 422 ] && [ "$(err_field)" = limit ]'
check list_bad_state_422 '[ "$(code GET "/v1/jobs?state=done")" = 422 ] && [ "$(err_field)" = state ]'

# a job held in the queue (no worker can take it: its blob is not a model, so it fails fast)
J=$(submit "{$GOOD,\"method\":\"rtn\",\"budget\":{\"samples\":2,\"seq_len\":16,\"epochs\":0},\"labels\":{\"suite\":\"api\"}}")
check submit_201 '[ -n "$J" ]' "$(body)"
check job_dir_written '[ -f "$D/jobs/$J/job.json" ] && [ -f "$D/jobs/$J/events.jsonl" ]'
check list_by_label '[ "$(curl -s "$URL/v1/jobs?label=suite=api" | jq .total)" = 1 ] && [ "$(curl -s "$URL/v1/jobs?label=suite=other" | jq .total)" = 0 ]'
wait_state "$J" "succeeded|failed" 120
check artifact_dotdot_400 '[ "$(code GET "/v1/jobs/$J/artifacts/../job.json" --path-as-is)" = 400 ]'
check artifact_encoded_dotdot_400 '[ "$(code GET "/v1/jobs/$J/artifacts/%2e%2e%2fjob.json" --path-as-is)" = 400 ]'
check artifact_hidden_400 '[ "$(code GET "/v1/jobs/$J/artifacts/.x")" = 400 ]'
check artifact_absent_404 '[ "$(code GET "/v1/jobs/$J/artifacts/nope.bin")" = 404 ]'
check cancel_finished_409 '[ "$(code POST "/v1/jobs/$J/cancel")" = 409 ]'
check delete_finished_204 '[ "$(code DELETE "/v1/jobs/$J")" = 204 ] && [ ! -e "$D/jobs/$J" ] && [ "$(code GET "/v1/jobs/$J")" = 404 ]'
# the queue is bounded (max_queue=3 here): with the one worker busy, the fourth waiting job is
# refused with 429
L=$(submit "{$GOOD,\"method\":\"mobilequant\",\"budget\":{\"samples\":64,\"seq_len\":64,\"epochs\":1000}}")
wait_state "$L" running 30
codes=
for i in 1 2 3 4; do codes="$codes $(jpost "{$GOOD,\"method\":\"rtn\",\"budget\":{\"samples\":2,\"seq_len\":16,\"epochs\":0}}")"; done
check queue_full_429 '[ "$codes" = " 201 201 201 429" ] && [ "$(err_code)" = queue_full ]' "codes:$codes (first job: $(curl -s "$URL/v1/jobs/$L" | jq -c "{state,error,log_tail}"))"
for id in $(curl -s "$URL/v1/jobs?limit=500" | jq -r '.jobs[] | select(.state == "queued" or .state == "running") | .id'); do
    code POST "/v1/jobs/$id/cancel" >/dev/null
done
check metrics_text '[ "$(code GET /metrics)" = 200 ] && grep -q "^quantd_http_requests_total{route=\"POST /v1/jobs\",status=\"422\"}" "$TMP/body" && grep -q "^quantd_upload_bytes_total " "$TMP/body" && grep -q "quantd_http_request_duration_seconds_bucket" "$TMP/body"'
# the exposition format: each family typed once, counters end in _total, the histogram is
# cumulative with +Inf equal to _count, and every job state has a sample
cp "$TMP/body" "$TMP/metrics"
types=$(grep '^# TYPE ' "$TMP/metrics" | awk '{print $3 "=" $4}' | sort | tr '\n' ' ')
check metrics_types '[ "$types" = "quantd_http_request_duration_seconds=histogram quantd_http_requests_total=counter quantd_jobs=gauge quantd_queue_length=gauge quantd_upload_bytes_total=counter quantd_worker_seconds_total=counter quantd_workers_busy=gauge quantd_workers_max=gauge " ]' "$types"
check metrics_job_states '[ "$(grep -c "^quantd_jobs{state=\"[a-z_]*\"} [0-9]" "$TMP/metrics")" = 6 ]'
r='route="GET /v1/jobs"'
inf=$(grep -F "quantd_http_request_duration_seconds_bucket{$r,le=\"+Inf\"}" "$TMP/metrics" | awk '{print $NF}')
cnt=$(grep -F "quantd_http_request_duration_seconds_count{$r}" "$TMP/metrics" | awk '{print $NF}')
mono=$(grep -F "quantd_http_request_duration_seconds_bucket{$r," "$TMP/metrics" | awk 'BEGIN{m=1;p=0} {if ($NF < p) m=0; p=$NF} END{print m}')
check metrics_histogram '[ -n "$inf" ] && [ "$inf" = "$cnt" ] && [ "$mono" = 1 ] && grep -qF "quantd_http_request_duration_seconds_sum{$r}" "$TMP/metrics"' "inf=$inf count=$cnt monotone=$mono"
ub=$(awk '/^quantd_upload_bytes_total /{print $NF}' "$TMP/metrics")
check metrics_upload_bytes_multipart '[ "${ub:-0}" -ge $(( $(stat -c %s "$MODEL") * 2 + $(stat -c %s "$TMP/fresh1") )) ]' "upload bytes $ub"
check metrics_blob_lookup_counted 'grep -q "^quantd_http_requests_total{route=\"GET /v1/blobs/{id}\",status=\"404\"}" "$TMP/metrics"'
stop_server

# big uploads stream: the server's peak RSS does not grow with the upload (raw and multipart,
# 120 MB each, chunked so that nothing is buffered by size); and the per-IP connection limit
D=$TMP/data_big
start_server "$D" --set max_upload_bytes=1G --set per_ip_connections=2 || bad start_big "$(cat "$D.err")"
hwm() { awk '/^VmHWM/{print $2}' "/proc/$SPID/status"; }
h0=$(hwm)
head -c 120000000 /dev/zero | curl -s -o "$TMP/body" -H 'Content-Type: application/octet-stream' -H 'Transfer-Encoding: chunked' --data-binary @- "$URL/v1/blobs"
zid=$(jq -r .id "$TMP/body")
head -c 120000000 /dev/zero | tr '\0' 'z' | curl -s -o "$TMP/body" -w '%{http_code}' -H 'Transfer-Encoding: chunked' \
    -F 'model=@-;filename=big.gguf' -F "calibration=@$TEXT" -F "spec={$TINY}" "$URL/v1/jobs" >"$TMP/code"
h1=$(hwm)
check big_upload_stored '[ "$zid" = "sha256:$(head -c 120000000 /dev/zero | sha256sum | cut -d" " -f1)" ] && [ "$(cat "$TMP/code")" = 201 ]' "$zid $(cat "$TMP/code") $(body)"
check big_upload_memory_flat '[ $((h1 - h0)) -lt 32768 ]' "peak RSS grew from ${h0} kB to ${h1} kB over 240 MB of uploads"
rm -f "$D/blobs/sha256/"*  # 240 MB less on the disk for the tests below
code POST "/v1/jobs/$(jq -r .id "$TMP/body")/cancel" >/dev/null
head -c 1000000 /dev/urandom >"$TMP/slow"
slow=()
for i in 1 2; do
    curl -s -H 'Content-Type: application/octet-stream' --limit-rate 20K --data-binary @"$TMP/slow" "$URL/v1/blobs" >/dev/null 2>&1 &
    slow+=($!)
done
sleep 0.7
third=$(curl -s -o /dev/null -w '%{http_code}' "$URL/healthz")
kill -KILL "${slow[@]}" 2>/dev/null; wait "${slow[@]}" 2>/dev/null
sleep 0.3
check per_ip_limit_refuses_third '[ "$third" = 000 ] && [ "$(code GET /healthz)" = 200 ]' "third connection got $third"
check per_ip_cut_uploads_leave_nothing '[ -z "$(ls "$D/blobs/tmp")" ] && [ -z "$(ls "$D/blobs/sha256")" ]'
stop_server
rm -rf "$D"

# a short disk: min_free_bytes set 32 MiB below what is free now, so 96 MB cannot fit. With a
# declared length the refusal comes before the body; chunked, it comes while streaming.
D=$TMP/data_disk
head -c 96000000 /dev/zero >"$TMP/z96"
free=$(df -B1 --output=avail "$TMP" | tail -1)
start_server "$D" --set max_upload_bytes=1G --set min_free_bytes=$((free - (32 << 20))) || bad start_disk "$(cat "$D.err")"
check disk_short_507_declared '[ "$(code POST /v1/blobs -H "Content-Type: application/octet-stream" --data-binary @"$TMP/z96")" = 507 ] && [ "$(err_code)" = insufficient_storage ]'
check disk_short_507_streaming '[ "$(code POST /v1/blobs -H "Content-Type: application/octet-stream" -H "Transfer-Encoding: chunked" --data-binary @"$TMP/z96")" = 507 ] && grep -q "during the upload" "$TMP/body"' "$(body)"
check disk_short_507_multipart '[ "$(code POST /v1/jobs -H "Transfer-Encoding: chunked" -F model=@"$TMP/z96" -F calibration=@"$TEXT")" = 507 ] && [ "$(err_field)" = model ]' "$(body)"
check disk_short_leaves_nothing '[ -z "$(ls "$D/blobs/tmp")" ] && [ -z "$(ls "$D/blobs/sha256")" ] && [ "$(curl -s "$URL/v1/jobs" | jq .total)" = 0 ]'
check disk_small_upload_fits '[ "$(code POST /v1/blobs -H "Content-Type: application/octet-stream" --data-binary @"$TEXT")" = 201 ]'
stop_server
rm -f "$TMP/z96"

# auth: tokens from a file, stored as hashes
"$Q" serve --gen-token read >"$TMP/tokens" 2>"$TMP/t1"
"$Q" serve --gen-token submit >>"$TMP/tokens" 2>"$TMP/t2"
"$Q" serve --gen-token admin >>"$TMP/tokens" 2>"$TMP/t3"
TR=$(sed -n 's/.*: //p' "$TMP/t1"); TS=$(sed -n 's/.*: //p' "$TMP/t2"); TA=$(sed -n 's/.*: //p' "$TMP/t3")
check tokens_stored_hashed '! grep -q "$TR" "$TMP/tokens" && [ $(wc -l <"$TMP/tokens") = 3 ]'
D2=$TMP/data2
start_server "$D2" --tokens "$TMP/tokens" || bad start_auth "$(cat "$D2.err")"
check auth_healthz_open '[ "$(code GET /healthz)" = 200 ]'
check auth_no_token_401 '[ "$(code GET /v1/jobs)" = 401 ] && [ "$(err_code)" = unauthorized ]'
check auth_bad_token_401 '[ "$(code GET /v1/jobs -H "Authorization: Bearer nope")" = 401 ]'
check auth_read_ok '[ "$(code GET /v1/jobs -H "Authorization: Bearer $TR")" = 200 ]'
check auth_read_cannot_upload_403 '[ "$(code POST /v1/blobs -H "Authorization: Bearer $TR" -H "Content-Type: application/octet-stream" --data-binary @"$TEXT")" = 403 ] && [ "$(err_code)" = forbidden ]'
check auth_submit_uploads '[ "$(code POST /v1/blobs -H "Authorization: Bearer $TS" -H "Content-Type: application/octet-stream" --data-binary @"$TEXT")" = 201 ]'
check auth_blob_lookup_needs_token '[ "$(code GET "/v1/blobs/$CID")" = 401 ] && [ "$(code GET "/v1/blobs/$CID" -H "Authorization: Bearer $TR")" = 200 ]'
check auth_read_cannot_submit_multipart_403 '[ "$(code POST /v1/jobs -H "Authorization: Bearer $TR" -F model=@"$MODEL" -F calibration=@"$TEXT")" = 403 ]'
check auth_read_cannot_cancel_403 '[ "$(code POST /v1/jobs/00000000-0000-4000-8000-000000000000/cancel -H "Authorization: Bearer $TR")" = 403 ] && [ "$(code POST /v1/jobs/00000000-0000-4000-8000-000000000000/cancel -H "Authorization: Bearer $TS")" = 404 ]'
check auth_read_reads_metrics '[ "$(code GET /metrics)" = 401 ] && [ "$(code GET /metrics -H "Authorization: Bearer $TR")" = 200 ]'
check auth_submit_cannot_delete_403 '[ "$(code DELETE /v1/jobs/00000000-0000-4000-8000-000000000000 -H "Authorization: Bearer $TS")" = 403 ]'
check auth_admin_delete_reaches_handler '[ "$(code DELETE /v1/jobs/00000000-0000-4000-8000-000000000000 -H "Authorization: Bearer $TA")" = 404 ]'
stop_server
out=$("$Q" serve --listen 0.0.0.0:0 --data "$TMP/data3" 2>&1 & p=$!; sleep 1; kill $p 2>/dev/null; wait $p; echo "rc=$?")
check nonloopback_without_tokens_refused 'grep -q "refusing" <<<"$out"' "$out"
