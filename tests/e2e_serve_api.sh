#!/usr/bin/env bash
# The service's HTTP surface without running the pipeline: health, the spec, uploads
# (dedup, 413, 415, interrupted), the bad-input catalogue of POST /v1/jobs (400, 415, 422 with
# the field named), path tricks, 404/405, listing, and auth (401/403, and the refusal to listen
# on a non-loopback address without tokens).
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
check job_budget_range_422 '[ "$(jpost "{$GOOD,\"budget\":{\"samples\":-4}}")" = 422 ] && [ "$(err_field)" = budget.samples ]'
check job_path_in_blob_id_422 '[ "$(jpost "{\"model\":\"sha256:../../../etc/passwd\",\"calibration\":\"$CID\"}")" = 422 ] && [ "$(err_field)" = model ]'
check job_threads_over_server_limit_422 '[ "$(jpost "{$GOOD,\"threads\":200}")" = 422 ] && [ "$(err_field)" = threads ]'
python3 -c 'print("{\"labels\":{\"x\":\"" + "a"*1100000 + "\"}}")' >"$TMP/huge.json" 2>/dev/null || head -c 1100000 /dev/zero | tr '\0' a >"$TMP/huge.json"
check job_body_too_large_413 '[ "$(code POST /v1/jobs -H "Content-Type: application/json" --data-binary @"$TMP/huge.json")" = 413 ]'
check no_job_created_by_bad_input '[ "$(curl -s "$URL/v1/jobs" | jq .total)" = 0 ] && [ $(ls "$D/jobs" | grep -vc "^\.tmp$") = 0 ]'

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
stop_server

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
check auth_submit_cannot_delete_403 '[ "$(code DELETE /v1/jobs/00000000-0000-4000-8000-000000000000 -H "Authorization: Bearer $TS")" = 403 ]'
check auth_admin_delete_reaches_handler '[ "$(code DELETE /v1/jobs/00000000-0000-4000-8000-000000000000 -H "Authorization: Bearer $TA")" = 404 ]'
stop_server
out=$("$Q" serve --listen 0.0.0.0:0 --data "$TMP/data3" 2>&1 & p=$!; sleep 1; kill $p 2>/dev/null; wait $p; echo "rc=$?")
check nonloopback_without_tokens_refused 'grep -q "refusing" <<<"$out"' "$out"
