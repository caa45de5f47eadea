#!/usr/bin/env bash
# The service's HTTP surface without running the pipeline: health, the spec, uploads
# (dedup, 413, 415, interrupted), blob lookups (GET/HEAD /v1/blobs/{id}), the bad-input
# catalogue of POST /v1/jobs (400, 415, 422 with the field named), multipart job submission
# (parts streamed into blobs, named by the spec, refused requests leave no blob), path tricks,
# 404/405, listing, the Prometheus exposition, big uploads with flat server memory, the per-IP
# connection limit, 507 on a short disk (min_free_bytes; also for a job submitted below the floor),
# the door's checks (a job that cannot run is a 422 naming the field and the user's file), and auth (401/403, and the refusal to
# listen on a non-loopback address without tokens); strict HTTP framing, RFC 9110 ranges, UTF-8
# in specs, token-file modes; availability under slow clients (header and body deadlines,
# idle connections displaced, SSE slots freed at disconnect, a trusted proxy's X-Forwarded-For).
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
# a body must declare its length (the size and disk checks come before its first byte)
check upload_chunked_411 '[ "$(code POST /v1/blobs -H "Content-Type: application/octet-stream" -H "Transfer-Encoding: chunked" --data-binary @"$TMP/big")" = 411 ] && [ "$(err_code)" = length_required ] && [ "$(err_field)" = Transfer-Encoding ]' "$(body)"
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
cancel_del() { # cancels the job of $TMP/body and deletes it (max_queue is 3 here)
    local id; id=$(jq -r .id "$TMP/body")
    code POST "/v1/jobs/$id/cancel" >/dev/null
    wait_state "$id" "succeeded|failed|cancelled" 60 && code DELETE "/v1/jobs/$id" >/dev/null
}
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
# files the server does not hold yet, and that pass the door's check (a job that cannot run is
# refused at submit): the model with padding after its tensors, the text with one more line
{ cat "$MODEL"; head -c 64 /dev/zero; } >"$TMP/fresh1"; { cat "$TEXT"; echo "One more story."; } >"$TMP/fresh2"
n0=$(nblobs)
check mp_bad_spec_422 '[ "$(mpost -F model=@"$TMP/fresh1" -F calibration=@"$TEXT" -F "spec={\"wbits\":3}")" = 422 ] && [ "$(err_field)" = wbits ]'
check mp_refused_leaves_no_blob '[ "$(nblobs)" = "$n0" ] && [ -z "$(ls "$D/blobs/tmp")" ]'
check mp_spec_not_json_400 '[ "$(mpost -F model=@"$TMP/fresh1" -F calibration=@"$TEXT" -F "spec={\"wbits\":")" = 400 ] && [ "$(err_code)" = invalid_json ] && [ "$(err_field)" = spec ]'
check mp_unused_part_422 '[ "$(mpost -F model=@"$TMP/fresh1" -F calibration=@"$TEXT" -F calibraton=@"$TMP/fresh2" -F "spec={$TINY}")" = 422 ] && [ "$(err_code)" = unknown_field ] && [ "$(err_field)" = calibraton ]'
check mp_names_missing_part_422 '[ "$(mpost -F model=@"$TMP/fresh1" -F calibration=@"$TEXT" -F "spec={\"eval\":\"heldout\"}")" = 422 ] && [ "$(err_field)" = eval ]'
check mp_missing_part_422 '[ "$(mpost -F model=@"$TMP/fresh1" -F "spec={$TINY}")" = 422 ] && [ "$(err_field)" = calibration ] && [ "$(err_code)" = required ]'
check mp_duplicate_part_400 '[ "$(mpost -F model=@"$TMP/fresh1" -F calibration=@"$TEXT" -F calibration=@"$TMP/fresh2")" = 400 ] && [ "$(err_code)" = invalid_multipart ] && [ "$(err_field)" = calibration ]'
# several model parts are the files of a model directory, named by their filenames: unsafe or
# repeated names are refused (422, field model) and leave no blob
HF=$FX/models/stories260K-hf
mdir() { mpost -F "model=@$HF/config.json;filename=$1" -F "model=@$HF/model.safetensors;filename=$2" -F "model=@$FX/models/tok512.bin;filename=tokenizer.bin" -F calibration=@"$TEXT" -F "spec={$TINY}"; }
for bad in "../config.json" "/etc/config.json" "a/../config.json" ".hidden" "a//b" 'a\b' "sub/"; do
    check "mp_model_dir_name_422 $bad" '[ "$(mdir "$bad" model.safetensors)" = 422 ] && [ "$(err_field)" = model ] && [ "$(err_code)" = invalid_value ]' "$(body)"
done
check mp_model_dir_repeated_name_422 '[ "$(mdir config.json config.json)" = 422 ] && grep -q "named twice" "$TMP/body"' "$(body)"
check mp_model_dir_file_and_dir_422 '[ "$(mdir a a/model.safetensors)" = 422 ] && grep -q "also a directory" "$TMP/body"' "$(body)"
check mp_model_dir_and_spec_model_422 '[ "$(mpost -F model=@"$HF/config.json" -F model=@"$HF/model.safetensors" -F calibration=@"$TEXT" -F "spec={\"model\":\"$MID\"}")" = 422 ] && [ "$(err_field)" = model ]' "$(body)"
check mp_model_dir_refused_leaves_no_blob '[ "$(nblobs)" = "$n0" ] && [ -z "$(ls "$D/blobs/tmp")" ]' "$(ls "$D/blobs/sha256")"
check mp_bad_part_name_400 '[ "$(mpost -F "../x=@$TMP/fresh1" -F calibration=@"$TEXT")" = 400 ] && [ "$(err_code)" = invalid_multipart ]'
check mp_oversize_part_413 '[ "$(mpost -F model=@"$TMP/big" -F calibration=@"$TEXT")" = 413 ] && [ "$(err_field)" = model ]'
check mp_chunked_411 '[ "$(mpost -H "Transfer-Encoding: chunked" -F calibration=@"$TEXT" -F model=@"$TMP/big")" = 411 ] && [ "$(err_code)" = length_required ]' "$(body)"
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
check mp_model_dir_201 '[ "$(mdir config.json model.safetensors)" = 201 ] && [ "$(jq -r ".spec.model[\"config.json\"]" "$TMP/body")" = "sha256:$(sha256sum "$HF/config.json" | cut -d" " -f1)" ] && [ "$(jq -r ".spec.model[\"model.safetensors\"]" "$TMP/body")" = "sha256:$(sha256sum "$HF/model.safetensors" | cut -d" " -f1)" ]' "$(body)"
check mp_model_dir_blobs_stored '[ "$(nblobs)" = $((n0 + 5)) ]'
cancel_del
# the same as a JSON spec naming one blob per file
CFG=$(upload "$HF/config.json"); STS=$(upload "$HF/model.safetensors"); TOK=$(upload "$FX/models/tok512.bin")
DIRSPEC="\"model\":{\"config.json\":\"$CFG\",\"model.safetensors\":\"$STS\"},\"tokenizer\":\"$TOK\",\"calibration\":\"$CID\",$TINY"
check job_model_dir_201 '[ "$(jpost "{$DIRSPEC}")" = 201 ] && [ "$(jq -r ".spec.model | keys | join(\",\")" "$TMP/body")" = config.json,model.safetensors ]' "$(body)"
cancel_del
check job_model_dir_missing_blob_422 '[ "$(jpost "{\"model\":{\"config.json\":\"$CFG\",\"model-00002-of-00002.safetensors\":\"$nob\"},\"calibration\":\"$CID\"}")" = 422 ] && [ "$(err_code)" = blob_not_found ] && [ "$(err_field)" = model ] && grep -q "model-00002-of-00002.safetensors" "$TMP/body"' "$(body)"
check job_model_dir_dotdot_422 '[ "$(jpost "{\"model\":{\"../../lock\":\"$CFG\"},\"calibration\":\"$CID\"}")" = 422 ] && [ "$(err_field)" = model ]' "$(body)"
check job_model_dir_not_blob_422 '[ "$(jpost "{\"model\":{\"config.json\":7},\"calibration\":\"$CID\"}")" = 422 ] && [ "$(err_field)" = model ]' "$(body)"
check job_model_dir_empty_422 '[ "$(jpost "{\"model\":{},\"calibration\":\"$CID\"}")" = 422 ] && [ "$(err_field)" = model ]' "$(body)"
python3 -c 'import json,sys; print(json.dumps({"model": {"f%d" % i: sys.argv[1] for i in range(65)}, "calibration": sys.argv[2]}))' "$CFG" "$CID" >"$TMP/many.json"
check job_model_dir_too_many_files_422 '[ "$(code POST /v1/jobs -H "Content-Type: application/json" --data-binary @"$TMP/many.json")" = 422 ] && [ "$(err_code)" = out_of_range ]' "$(body)"
n0=$(nblobs)
check mp_spec_part_optional '[ "$(mpost -F model=@"$MODEL" -F calibration=@"$TEXT")" = 201 ] && [ "$(jq -r .spec.method "$TMP/body")" = mobilequant ]' "$(body)"
for id in $(curl -s "$URL/v1/jobs?limit=500" | jq -r '.jobs[].id'); do
    code POST "/v1/jobs/$id/cancel" >/dev/null
    wait_state "$id" "succeeded|failed|cancelled" 60 && code DELETE "/v1/jobs/$id" >/dev/null
done

# the door: a job that cannot run is refused at submit (422 naming the field, the message naming
# the user's file, never a server path), by the pipeline's own checks run in a short-lived
# `quantd work --check` child on the headers, the tokenizer and the data
BAD=$TMP/bad; python3 tests/bad_inputs.py "$FX" "$BAD"
HFD="\"config.json\":\"$(upload "$FX/models/stories260K-hf/config.json")\",\"model.safetensors\":\"$(upload "$FX/models/stories260K-hf/model.safetensors")\""
TOKB=$(upload "$FX/models/tok512.bin")
door() { # name, spec body (without braces), field, pattern the message must match
    local c; c=$(jpost "{$2}")
    if [ "$c" = 422 ] && [ "$(err_field)" = "$3" ] && [ "$(err_code)" = unsupported_input ] &&
       jq -r .error.message "$TMP/body" | grep -Eq "$4" && ! grep -q "$D" "$TMP/body"; then ok "door_$1"
    else bad "door_$1" "HTTP $c $(body)"; fi
}
door iq_type "\"model\":\"$(upload "$BAD/iq.gguf")\",\"calibration\":\"$CID\"" model "^model: tensor blk.0.attn_q.weight: unsupported type IQ4_NL"
STS0=$(upload "$FX/models/stories260K-hf/model.safetensors")
door rope_scaling_yarn "\"model\":{\"config.json\":\"$(upload "$BAD/hf-yarn/config.json")\",\"model.safetensors\":\"$STS0\",\"tokenizer.bin\":\"$TOKB\"},\"calibration\":\"$CID\"" model "^model/config.json: unsupported rope_scaling type 'yarn'"
door shard_missing "\"model\":{$HFD,\"model.safetensors.index.json\":\"$(upload "$BAD/hf-shard/model.safetensors.index.json")\",\"tokenizer.bin\":\"$TOKB\"},\"calibration\":\"$CID\"" model "^model/model.safetensors.index.json: weight_map\\['model.norm.weight'\\] names shard model-00002-of-00002.safetensors, which is missing"
door pre_tokenizer "\"model\":\"$MID\",\"tokenizer\":\"$(upload "$BAD/tok-pre.json")\",\"calibration\":\"$CID\"" tokenizer "^tokenizer: pre_tokenizer.type: \"Whitespace\" is not supported"
door normalizer "\"model\":\"$MID\",\"tokenizer\":\"$(upload "$BAD/tok-norm.json")\",\"calibration\":\"$CID\"" tokenizer "^tokenizer: normalizer.type: \"Lowercase\" is not supported"
door no_tokenizer "\"model\":{$HFD},\"calibration\":\"$CID\"" tokenizer "^model: the checkpoint carries no vocabulary"
door wrong_format "\"model\":\"$CID\",\"calibration\":\"$CID\"" model "^model: .*not a llama2.c file"
door swapped "\"model\":\"$CID\",\"calibration\":\"$MID\"" model "^model: "
door calibration_format "\"model\":\"$MID\",\"calibration\":\"$(upload "$BAD/noise")\"" calibration "^calibration: cannot tell the data format"
door tokenizer_vocab_size "\"model\":\"$MID\",\"tokenizer\":\"$(upload "$FX/models/llama2-tokenizer.bin")\",\"calibration\":\"$CID\"" tokenizer "32000 tokens but the model's vocab_size is 512"
door seq_len_over_context "$GOOD,\"budget\":{\"seq_len\":4096}" budget.seq_len "seq_len: 4096 exceeds the model's context 2048"
door abits_export_cannot_emit "$GOOD,\"abits\":{\"qkv\":4}" abits.qkv "class qkv: 4 bits: the integer model takes 8"
door abits_16_on_8bit_path "$GOOD,\"abits\":{\"silu\":16}" abits.silu "class silu: 16 bits: the integer model takes 8"
door eval_split_too_small "$GOOD,\"eval_split\":0.0001" eval_split "1 evaluation tokens, need at least 2"
# a directory of one file: the file keeps its name, so its format shows
door dir_one_file "\"model\":{\"weights.gguf\":\"$(upload "$BAD/iq.gguf")\"},\"calibration\":\"$CID\"" model "^model/weights.gguf: tensor blk.0.attn_q.weight: unsupported type"
check door_accepts_what_runs '[ "$(jpost "{$GOOD,$TINY,\"abits\":{\"res\":8,\"score\":8}}")" = 201 ]' "$(body)"
cancel_del
check door_refusals_create_no_job '[ "$(curl -s "$URL/v1/jobs" | jq .total)" = 0 ] && [ $(ls "$D/jobs" | grep -vc "^\.tmp$") = 0 ] && [ -z "$(ls -A "$D/jobs/.tmp")" ]' "$(ls -A "$D/jobs" "$D/jobs/.tmp")"
# the memory estimate at the door: worker_mem_bytes (the worker's RLIMIT_AS) below what the run
# would need is a 422 naming the budget, before anything is stored; worker_mem_check=0 leaves it
# to the limit
start memdoor --set worker_mem_bytes=300M || bad memdoor_start "$(cat "$TMP/memdoor.err")"
U0=$URL; URL=$SURL
MM=$(upload "$MODEL"); MC=$(upload "$TEXT")
c=$(jpost "{\"model\":\"$MM\",\"calibration\":\"$MC\"}")
check door_memory_estimate_422 '[ "$c" = 422 ] && [ "$(err_code)" = over_memory_limit ] && [ "$(err_field)" = budget ] && jq -r .error.message "$TMP/body" | grep -Eq "^budget: the run would need about [0-9.]+ [KMG]iB of memory at its peak .*more than the 300 MiB a worker may use"' "HTTP $c $(body)"
check door_memory_refusal_stores_no_job '[ "$(curl -s "$URL/v1/jobs" | jq .total)" = 0 ]'
URL=$U0
start memoff --set worker_mem_bytes=300M --set worker_mem_check=0 || bad memoff_start "$(cat "$TMP/memoff.err")"
U0=$URL; URL=$SURL
MM=$(upload "$MODEL"); MC=$(upload "$TEXT")
c=$(jpost "{\"model\":\"$MM\",\"calibration\":\"$MC\"}")
check door_memory_check_off_accepts '[ "$c" = 201 ]' "HTTP $c $(body)"
[ "$c" = 201 ] && code POST "/v1/jobs/$(jq -r .id "$TMP/body")/cancel" >/dev/null
URL=$U0

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

# strict HTTP: framing the server must refuse (400, JSON, before any body is read), bodies on
# routes that take none (answered, the connection kept), UTF-8 in spec strings, Last-Event-ID
RAW="python3 tests/rawhttp.py"
raw() { $RAW send "$ADDR" "$1" >"$TMP/raw"; }
raw_status() { head -1 "$TMP/raw" | awk '{print $2}'; }
raw_json_code() { sed -n '/^\r$/,$p' "$TMP/raw" | tail -n +2 | jq -r '.error.code // ""' 2>/dev/null; }
raw 'GET /healthz HTTP/1.1\r\n\r\n'
check http11_without_host_400 '[ "$(raw_status)" = 400 ] && [ "$(raw_json_code)" = bad_request ] && grep -qi "^Content-Type: application/json" "$TMP/raw"' "$(cat "$TMP/raw")"
raw 'GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n'
check two_hosts_400 '[ "$(raw_status)" = 400 ] && [ "$(raw_json_code)" = bad_request ]' "$(cat "$TMP/raw")"
raw 'GET /healthz HTTP/1.0\r\n\r\n'
check http10_without_host_ok '[ "$(raw_status)" = 200 ]' "$(cat "$TMP/raw")"
nb0=$(ls "$D/blobs/sha256" | wc -l)
raw 'POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!'
check content_length_conflict_400 '[ "$(raw_status)" = 400 ] && [ "$(raw_json_code)" = bad_request ] && grep -q "Content-Length" "$TMP/raw"' "$(cat "$TMP/raw")"
raw 'POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n'
check content_length_with_chunked_400 '[ "$(raw_status)" = 400 ] && [ "$(raw_json_code)" = bad_request ]' "$(cat "$TMP/raw")"
check framing_refusals_store_nothing '[ "$(ls "$D/blobs/sha256" | wc -l)" = "$nb0" ] && [ -z "$(ls "$D/blobs/tmp")" ]'
raw 'DELETE /v1/jobs/00000000-0000-4000-8000-000000000000 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello'
check delete_with_body_answered '[ "$(raw_status)" = 404 ] && [ "$(raw_json_code)" = not_found ]' "$(cat "$TMP/raw")"
# one request per connection: every head passes the intake (server/intake.h); a pipelined second
# request is not read, and the answer says Connection: close
raw 'GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'
check get_with_body_answered_once_closed '[ "$(grep -o "HTTP/1.1 200" "$TMP/raw" | wc -l)" = 1 ] && grep -qi "^Connection: close" "$TMP/raw"' "$(cat "$TMP/raw")"
# raw_is NAME STATUS REQUEST [PATTERN]: the answer to REQUEST has STATUS; a 4xx or 5xx is
# quantd's JSON error shape, and PATTERN (grep) is in the answer when given
raw_is() {
    raw "$3"
    local cond="[ \"\$(raw_status)\" = $2 ]"
    case $2 in [45]*) cond="$cond && [ -n \"\$(raw_json_code)\" ] && grep -qi '^Content-Type: application/json' \"\$TMP/raw\"";; esac
    [ -n "${4:-}" ] && cond="$cond && grep -q '$4' \"\$TMP/raw\""
    check "$1" "$cond" "$(cat "$TMP/raw")"
}
# a body's length must be declared: any Transfer-Encoding is a JSON 411 naming the header,
# before any body is read (chunked framing is never parsed, so it cannot be malformed)
raw_is te_chunked_411_json 411 'POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n' '"field":"Transfer-Encoding"'
raw_is te_identity_411_json 411 'POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: identity\r\n\r\nhello' 'length_required'
raw_is te_on_get_411_json 411 'GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'
check te_refusals_store_nothing '[ "$(ls "$D/blobs/sha256" | wc -l)" = "$nb0" ] && [ -z "$(ls "$D/blobs/tmp")" ]'
# what libmicrohttpd 0.9.75 used to answer itself in HTML never reaches it: the intake answers JSON
raw_is http_version_505_json 505 'GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n' 'http_version_not_supported'
raw_is header_without_colon_400_json 400 'GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n' 'without a colon'
raw_is header_space_before_colon_400_json 400 'GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n'
raw_is header_folded_400_json 400 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n' 'folding'
raw_is bare_lf_400_json 400 'GET /healthz HTTP/1.1\nHost: x\n\n' 'CRLF'
raw_is content_length_not_a_number_400_json 400 'POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n' '"field":"Content-Length"'
raw_is content_length_overflow_413_json 413 'POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n' 'payload_too_large'
raw_is not_http_400_json 400 'hello there\r\n\r\n' 'not an HTTP'
raw_is target_too_long_414_json 414 "GET /$(head -c 9000 /dev/zero | tr '\0' a) HTTP/1.1\r\nHost: x\r\n\r\n" 'uri_too_long'
raw 'HEAD /healthz HTTP/1.1\r\n\r\n'
check head_request_refused_no_body '[ "$(raw_status)" = 400 ] && [ -z "$(sed -n "/^\r$/,\$p" "$TMP/raw" | tail -n +2)" ]' "$(cat "$TMP/raw")"
$RAW bighead "$ADDR" 1100 >"$TMP/raw"
check headers_too_large_431_json '[ "$(raw_status)" = 431 ] && [ "$(raw_json_code)" = header_fields_too_large ]' "$(head -c 300 "$TMP/raw")"
$RAW bighead "$ADDR" 24 >"$TMP/raw"
check headers_24k_accepted '[ "$(raw_status)" = 200 ]' "$(head -c 300 "$TMP/raw")"
check door_refusals_store_nothing '[ "$(ls "$D/blobs/sha256" | wc -l)" = "$nb0" ] && [ -z "$(ls "$D/blobs/tmp")" ]'
printf '{%s,"labels":{"team":"np\xff"}}' "$GOOD" >"$TMP/badutf8.json"
check label_invalid_utf8_422 '[ "$(code POST /v1/jobs -H "Content-Type: application/json" --data-binary @"$TMP/badutf8.json")" = 422 ] && [ "$(err_field)" = labels.team ]' "$(body)"
printf '{%s,"lab\xc0\xafels":{}}' "$GOOD" >"$TMP/badkey.json"
check key_invalid_utf8_422_json '[ "$(code POST /v1/jobs -H "Content-Type: application/json" --data-binary @"$TMP/badkey.json")" = 422 ] && jq -e . "$TMP/body" >/dev/null' "$(body)"
check label_utf8_accepted '[ "$(jpost "{$GOOD,\"method\":\"rtn\",\"budget\":{\"samples\":2,\"seq_len\":16,\"epochs\":0},\"labels\":{\"team\":\"caf\u00e9 \u20ac\"}}")" = 201 ] && [ "$(jq -r .spec.labels.team "$TMP/body")" = "café €" ]' "$(body)"
# that spec names no threads: it gets the server's job_threads, here (local workers, 1 of them)
# every CPU the server may use, stored and echoed as chosen
ncpu=$(nproc); [ "$ncpu" -gt 64 ] && ncpu=64
check job_threads_default_all_cpus '[ "$(jq .spec.threads "$TMP/body")" = "$ncpu" ] && [ "$(curl -s "$URL/v1/jobs/$(jq -r .id "$TMP/body")" | jq .spec.threads)" = "$ncpu" ]' "$(body)"
code POST "/v1/jobs/$(jq -r .id "$TMP/body")/cancel" >/dev/null
check job_list_strict_json '[ "$(code GET "/v1/jobs?limit=500")" = 200 ] && python3 -c "import json,sys; json.load(open(sys.argv[1], encoding=\"utf-8\", errors=\"strict\"))" "$TMP/body"'
wait_state "$L" "cancelled|failed|succeeded" 60
check sse_empty_last_event_id_is_absent '[ "$(code GET "/v1/jobs/$L/events" -H "Last-Event-ID;")" = 200 ] && [ "$(grep -c "^id: " "$TMP/body")" -ge 2 ] && grep -q "^id: 1$" "$TMP/body"' "$(head -c 300 "$TMP/body")"
check sse_empty_last_event_id_query '[ "$(code GET "/v1/jobs/$L/events?last_event_id=")" = 200 ] && grep -q "^id: 1$" "$TMP/body"'
stop_server

# RFC 9110 ranges over a served file (the dashboard from static_dir: 1000 bytes)
D=$TMP/data_range
mkdir -p "$TMP/static"; head -c 1000 /dev/urandom >"$TMP/static/index.html"
start_server "$D" --set static_dir="$TMP/static" || bad start_range "$(cat "$D.err")"
rcode() { code GET / -H "Range: $1"; }
blen() { stat -c %s "$TMP/body"; }
check range_206 '[ "$(rcode bytes=10-19)" = 206 ] && [ "$(blen)" = 10 ] && cmp -s "$TMP/body" <(tail -c +11 "$TMP/static/index.html" | head -c 10)'
check range_open_end_206 '[ "$(rcode bytes=990-)" = 206 ] && [ "$(blen)" = 10 ]'
check range_suffix_206 '[ "$(rcode bytes=-10)" = 206 ] && cmp -s "$TMP/body" <(tail -c 10 "$TMP/static/index.html")'
check range_suffix_longer_than_file_206 '[ "$(rcode bytes=-5000)" = 206 ] && [ "$(blen)" = 1000 ]'
check range_last_past_end_clamped '[ "$(rcode bytes=995-5000)" = 206 ] && [ "$(blen)" = 5 ]'
check range_suffix_zero_416 '[ "$(rcode bytes=-0)" = 416 ] && [ "$(err_code)" = range_not_satisfiable ]' "$(body)"
check range_first_past_end_416 '[ "$(rcode bytes=1000-)" = 416 ]'
check range_negative_last_ignored_200 '[ "$(rcode bytes=0--1)" = 200 ] && [ "$(blen)" = 1000 ]'
check range_reversed_ignored_200 '[ "$(rcode bytes=20-10)" = 200 ] && [ "$(blen)" = 1000 ]'
check range_signed_ignored_200 '[ "$(rcode bytes=+5-9)" = 200 ] && [ "$(rcode "bytes=5-+9")" = 200 ]'
check range_other_unit_ignored_200 '[ "$(rcode items=0-9)" = 200 ] && [ "$(blen)" = 1000 ]'
stop_server

# token files: one that others may write is refused at start, naming the file and its mode
"$Q" serve --gen-token admin >"$TMP/wtokens" 2>/dev/null
chmod 0666 "$TMP/wtokens"
out=$(timeout 10 "$Q" serve --listen 127.0.0.1:0 --data "$TMP/data_wt" --tokens "$TMP/wtokens" 2>&1); rc=$?
check token_file_world_writable_refused '[ $rc = 1 ] && grep -q "$TMP/wtokens" <<<"$out" && grep -q "mode 0666" <<<"$out"' "rc=$rc $out"
chmod 0620 "$TMP/wtokens"
out=$(timeout 10 "$Q" serve --listen 127.0.0.1:0 --data "$TMP/data_wt" --tokens "$TMP/wtokens" 2>&1); rc=$?
check token_file_group_writable_refused '[ $rc = 1 ] && grep -q "mode 0620" <<<"$out"' "rc=$rc $out"


# big uploads stream: the server's peak RSS does not grow with the upload (raw and multipart,
# 120 MB each, streamed from files by curl -T and -F); and the per-IP connection limit.
D=$TMP/data_big
start_server "$D" --set max_upload_bytes=1G --set per_ip_connections=2 || bad start_big "$(cat "$D.err")"
hwm() { awk '/^VmHWM/{print $2}' "/proc/$SPID/status"; }
h0=$(hwm)
head -c 120000000 /dev/zero >"$TMP/z120"
curl -s -o "$TMP/body" -H 'Content-Type: application/octet-stream' -X POST -T "$TMP/z120" "$URL/v1/blobs"
zid=$(jq -r .id "$TMP/body")
tr '\0' 'z' <"$TMP/z120" >"$TMP/zz120"; rm -f "$TMP/z120"
curl -s -o "$TMP/body" -w '%{http_code}' -F "model=@$TMP/zz120;filename=big.gguf" -F "calibration=@$TEXT" \
    -F "spec={$TINY}" "$URL/v1/jobs" >"$TMP/code"
rm -f "$TMP/zz120"
h1=$(hwm)
# the multipart one is no checkpoint: the door reads its first bytes (not the 120 MB) and
# refuses it, and the part is not stored
check big_upload_stored '[ "$zid" = "sha256:$(head -c 120000000 /dev/zero | sha256sum | cut -d" " -f1)" ] && [ "$(cat "$TMP/code")" = 422 ] && [ "$(err_field)" = model ] && [ "$(ls "$D/blobs/sha256" | wc -l)" = 1 ] && [ -z "$(ls "$D/blobs/tmp")" ]' "$zid $(cat "$TMP/code") $(body)"
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
third=$(curl -s -o "$TMP/third" -w '%{http_code}' "$URL/healthz")
# X-Forwarded-For from a peer that is not a configured proxy changes nothing
third_xff=$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Forwarded-For: 10.9.9.9' "$URL/healthz")
kill -KILL "${slow[@]}" 2>/dev/null; wait "${slow[@]}" 2>/dev/null
sleep 0.3
check per_ip_limit_refuses_third '[ "$third" = 429 ] && [ "$(jq -r .error.code "$TMP/third")" = too_many_requests ] && [ "$(code GET /healthz)" = 200 ]' "third connection got $third"
check per_ip_xff_not_trusted '[ "$third_xff" = 429 ]' "got $third_xff"
check per_ip_cut_uploads_leave_nothing '[ -z "$(ls "$D/blobs/tmp")" ] && [ -z "$(ls "$D/blobs/sha256")" ]'
stop_server
rm -rf "$D"

# availability: idle and slow connections cannot lock an address out. Connections still in
# their headers are closed at a deadline that bytes do not reset (header_timeout_s), a body
# must keep a minimum average rate, and an address at its limit displaces its oldest idle or
# header-phase connection instead of being refused.
D=$TMP/data_slow
start_server "$D" --set per_ip_connections=3 --set header_timeout_s=2 --set body_min_rate=1K \
    --set body_grace_s=1 || bad start_slow "$(cat "$D.err")"
loris=()
for i in 1 2 3; do
    $RAW trickle "$ADDR" 'GET /healthz HTTP/1.1\r\nHost: x\r\n' 'X-a: b\r\n' 60 0.25 >"$TMP/loris$i" &
    loris+=($!)
done
for _ in $(seq 100); do [ "$(cat "$TMP"/loris? 2>/dev/null | grep -c connected)" = 3 ] && break; sleep 0.1; done
sleep 1.5  # past the second a just-opened connection is left alone
check slow_headers_do_not_lock_out '[ "$(code GET /healthz)" = 200 ]' "$(body)"
wait "${loris[@]}" 2>/dev/null
check header_deadline_not_reset_by_bytes 'grep -q "^closed after" "$TMP/loris1" && grep -q "^closed after" "$TMP/loris2" && grep -q "^closed after" "$TMP/loris3"' "$(cat "$TMP"/loris*)"
$RAW trickle "$ADDR" 'POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n' 'xxxxxxxxxx' 60 0.25 >"$TMP/slowbody"
check slow_body_closed 'grep -q "^closed after" "$TMP/slowbody"' "$(cat "$TMP/slowbody")"
sleep 0.3
check slow_body_leaves_nothing '[ -z "$(ls "$D/blobs/tmp")" ] && [ -z "$(ls "$D/blobs/sha256" 2>/dev/null)" ]'
head -c 60000 /dev/urandom >"$TMP/paced"
check paced_upload_above_min_rate_ok '[ "$(code POST /v1/blobs -H "Content-Type: application/octet-stream" --limit-rate 20K --data-binary @"$TMP/paced")" = 201 ]' "$(body)"
# a client that vanishes from an event stream frees its slot at once, not at the next keepalive
MID2=$(upload "$MODEL"); CID2=$(upload "$TEXT")
LJ=$(submit "{\"model\":\"$MID2\",\"calibration\":\"$CID2\",\"method\":\"mobilequant\",\"budget\":{\"samples\":64,\"seq_len\":64,\"epochs\":1000}}")
sse=()
for i in 1 2 3; do curl -sN "$URL/v1/jobs/$LJ/events" >/dev/null 2>&1 & sse+=($!); done
sleep 0.5
held=$(curl -s -o /dev/null -w '%{http_code}' "$URL/healthz")
kill -KILL "${sse[@]}" 2>/dev/null; wait "${sse[@]}" 2>/dev/null
freed=000
for _ in $(seq 40); do
    freed=$(curl -s -o /dev/null -w '%{http_code}' "$URL/healthz")
    [ "$freed" = 200 ] && break
    sleep 0.1
done
check sse_streams_hold_slots '[ "$held" = 429 ]' "got $held with 3 streams open"
check sse_slot_freed_at_disconnect '[ "$freed" = 200 ]' "got $freed"
code POST "/v1/jobs/$LJ/cancel" >/dev/null
stop_server
check guard_counts_logged 'grep -q "connections closed by the guard: [1-9][0-9]* header deadlines, [1-9][0-9]* slow bodies" "$D.err"' "$(tail -3 "$D.err")"
rm -rf "$D"

# behind a trusted proxy: the proxy's connections are not limited by its own address; its
# requests count against the client named by X-Forwarded-For (the rightmost address that is not
# a proxy; addresses further left are the client's own words and are not believed)
D=$TMP/data_proxy
start_server "$D" --set per_ip_connections=2 --set trusted_proxies=127.0.0.1,::1 || bad start_proxy "$(cat "$D.err")"
slow=()
for i in 1 2; do
    curl -s -H 'Content-Type: application/octet-stream' -H 'X-Forwarded-For: 10.0.0.1' --limit-rate 20K \
        --data-binary @"$TMP/slow" "$URL/v1/blobs" >/dev/null 2>&1 &
    slow+=($!)
done
sleep 0.7
check proxy_client_over_limit_429 '[ "$(code GET /healthz -H "X-Forwarded-For: 10.0.0.1")" = 429 ] && [ "$(err_code)" = too_many_requests ]' "$(body)"
check proxy_spoofed_left_entry_429 '[ "$(code GET /healthz -H "X-Forwarded-For: 10.7.7.7, 10.0.0.1")" = 429 ]'
check proxy_chain_skips_trusted_429 '[ "$(code GET /healthz -H "X-Forwarded-For: 10.0.0.1, 127.0.0.1")" = 429 ]'
check proxy_other_client_ok '[ "$(code GET /healthz -H "X-Forwarded-For: 10.0.0.2")" = 200 ]'
check proxy_itself_ok '[ "$(code GET /healthz)" = 200 ]'
kill -KILL "${slow[@]}" 2>/dev/null; wait "${slow[@]}" 2>/dev/null
stop_server
out=$("$Q" serve --listen 127.0.0.1:0 --data "$TMP/data_badproxy" --set trusted_proxies=10.0.0.0/33 2>&1); rc=$?
check bad_trusted_proxies_refused '[ $rc = 1 ] && grep -q "trusted_proxies" <<<"$out"' "rc=$rc $out"
rm -rf "$D"

# a short disk: min_free_bytes set 32 MiB below what is free now, so 96 MB cannot fit. With a
# declared length the refusal comes before the body.
D=$TMP/data_disk
head -c 96000000 /dev/zero >"$TMP/z96"
head -c 28000000 /dev/urandom >"$TMP/r20a"; head -c 28000000 /dev/urandom >"$TMP/r20b" # before free is read
free=$(df -B1 --output=avail "$TMP" | tail -1)
start_server "$D" --set max_upload_bytes=1G --set min_free_bytes=$((free - (32 << 20))) || bad start_disk "$(cat "$D.err")"
check disk_short_507_declared '[ "$(code POST /v1/blobs -H "Content-Type: application/octet-stream" --data-binary @"$TMP/z96")" = 507 ] && [ "$(err_code)" = insufficient_storage ]'
check disk_short_507_multipart '[ "$(code POST /v1/jobs -F model=@"$TMP/z96" -F calibration=@"$TEXT")" = 507 ] && [ "$(err_code)" = insufficient_storage ]' "$(body)"
# two uploads (28 MB) that each fit but not together: both pass the check of their declared length, and
# the disk runs short while they stream (checked every 4 MiB): at least one is refused then
ups=()
for f in r20a r20b; do
    curl -s -o "$TMP/$f.out" -w '%{http_code}' -H 'Content-Type: application/octet-stream' --limit-rate 5M \
        -X POST -T "$TMP/$f" "$URL/v1/blobs" >"$TMP/$f.code" &
    ups+=($!)
done
wait "${ups[@]}"
check disk_short_507_streaming 'grep -q 507 "$TMP/r20a.code" "$TMP/r20b.code" && grep -qh "during the upload" "$TMP/r20a.out" "$TMP/r20b.out"' "$(cat "$TMP"/r20?.code "$TMP"/r20?.out)"
rm -f "$D/blobs/sha256/"* "$TMP"/r20?
check disk_short_leaves_nothing '[ -z "$(ls "$D/blobs/tmp")" ] && [ -z "$(ls "$D/blobs/sha256")" ] && [ "$(curl -s "$URL/v1/jobs" | jq .total)" = 0 ]'
check disk_small_upload_fits '[ "$(code POST /v1/blobs -H "Content-Type: application/octet-stream" --data-binary @"$TEXT")" = 201 ]'
DM=$(upload "$MODEL"); DT=$(upload "$TEXT")
stop_server
# the disk below the floor when the job comes (its blobs already stored): 507 at submit, no job
free=$(df -B1 --output=avail "$TMP" | tail -1)
start_server "$D" --set min_free_bytes=$((free + (1 << 30))) || bad start_disk_floor "$(cat "$D.err")"
check disk_floor_job_507 '[ "$(code POST /v1/jobs -H "Content-Type: application/json" -d "{\"model\":\"$DM\",\"calibration\":\"$DT\"}")" = 507 ] && [ "$(err_code)" = insufficient_storage ] && [ "$(curl -s "$URL/v1/jobs" | jq .total)" = 0 ]' "$(body)"
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
