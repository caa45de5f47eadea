#!/usr/bin/env bash
# `quantd client` end to end against the real server on port 0: submit --wait (exit 0), a
# failing gate (3), a failed job (1), a rejected request (4), an unreachable server (5), bad
# usage (2), --wait-timeout (8) then cancel, the upload skipped for a file the server already
# holds, a Hugging Face directory as --model (each file once, laid out again by the worker),
# status / list / events / download, and bearer tokens from QUANTD_TOKEN.
set -u
cd "$(dirname "$0")/.."
. tests/e2e_common.inc

start data && URL=$SURL || { bad server_start "$(cat "$TMP/data.err")"; exit 1; }
export QUANTD_URL=$URL
unset QUANTD_TOKEN
C() { "$Q" client "$@"; }
SMALL=(--samples 4 --seq-len 32 --epochs 2 --wait-timeout 120)  # a stuck job fails the test, never hangs it

# 1. the happy path: uploads, waits, passes its gate, prints JSON with the outcome
C submit --model "$MODEL" --calib "$TEXT" "${SMALL[@]}" --gate max_ppl_increase=50% --wait --json \
    >"$TMP/ok.json" 2>"$TMP/ok.err"
rc=$?
if [ $rc = 0 ] && grep -q '"state":[[:space:]]*"succeeded"' "$TMP/ok.json" &&
   grep -q '"client_exit":[[:space:]]*0' "$TMP/ok.json"; then ok submit_wait_success_exit_0
else bad submit_wait_success_exit_0 "rc=$rc $(tail -5 "$TMP/ok.err")"; fi
ID=$(sed -n 's/^\t"id":[[:space:]]*"\([0-9a-f-]\{36\}\)".*/\1/p' "$TMP/ok.json" | head -1)
if grep -q 'uploaded' "$TMP/ok.err" && grep -q 'gate max_ppl_increase <= 50%.*passed' "$TMP/ok.err" &&
   grep -q 'optimize' "$TMP/ok.err"; then ok progress_and_gate_on_stderr
else bad progress_and_gate_on_stderr "$(cat "$TMP/ok.err")"; fi

# 2. the same files again: nothing new is stored, and the client says so
nblobs=$(ls "$TMP/data/blobs/sha256" | wc -l)
C submit --model "$MODEL" --calib "$TEXT" "${SMALL[@]}" --gate max_ppl_increase=0.001% --wait \
    >"$TMP/gate.out" 2>"$TMP/gate.err"
rc=$?
if [ $rc = 3 ] && grep -q 'FAILED' "$TMP/gate.out"; then ok failing_gate_exit_3
else bad failing_gate_exit_3 "rc=$rc $(cat "$TMP/gate.out") $(tail -3 "$TMP/gate.err")"; fi
# the client asks HEAD /v1/blobs/{id} first: a file the server holds is not sent again
if grep -q 'model: .*already on the server, upload skipped' "$TMP/gate.err" &&
   grep -q 'calibration: .*already on the server, upload skipped' "$TMP/gate.err"; then
    ok dedup_upload_skipped
else bad dedup_upload_skipped "$(grep -E '^(model|calibration):' "$TMP/gate.err")"; fi
# ... and the server saw no second upload: POST /v1/blobs answered 201 twice (model and
# calibration, in step 1) and nothing else
posts=$(curl -s "$URL/metrics" | grep '^quantd_http_requests_total{route="POST /v1/blobs"' | awk '{s += $NF} END {print s + 0}')
[ "$posts" = 2 ] && ok dedup_no_bytes_sent || bad dedup_no_bytes_sent "POST /v1/blobs was called $posts times"
n2=$(ls "$TMP/data/blobs/sha256" | wc -l)
[ "$nblobs" = 2 ] && [ "$n2" = 2 ] && ok dedup_no_new_blob || bad dedup_no_new_blob "$nblobs -> $n2 blobs"

# 2b. a Hugging Face directory: each file uploaded once, laid out again as a directory by the
# worker (symlinks to the blobs), and a second submit sends nothing
HFD=$TMP/stories-hf
mkdir -p "$HFD/sub" && cp "$FX/models/stories260K-hf/config.json" "$FX/models/stories260K-hf/model.safetensors" "$HFD/" &&
    cp "$FX/models/tok512.bin" "$HFD/tokenizer.bin" && echo '{}' >"$HFD/sub/extra.json" && echo x >"$HFD/.hidden"
C submit --model "$HFD/" --calib "$TEXT" "${SMALL[@]}" --wait --json >"$TMP/dir.json" 2>"$TMP/dir.err"
rc=$?
DID=$(jq -r .id "$TMP/dir.json" 2>/dev/null)
if [ $rc = 0 ] && [ "$(jq -r .state "$TMP/dir.json")" = succeeded ] &&
   [ "$(jq -r '.spec.model | keys | join(",")' "$TMP/dir.json")" = "config.json,model.safetensors,sub/extra.json,tokenizer.bin" ] &&
   [ "$(jq -r .spec.labels.model_file "$TMP/dir.json")" = stories-hf ] &&
   [ "$(grep -c '^model .*uploaded' "$TMP/dir.err")" = 4 ]; then ok submit_model_dir
else bad submit_model_dir "rc=$rc $(head -c 400 "$TMP/dir.json") $(tail -5 "$TMP/dir.err")"; fi
JD=$TMP/data/jobs/$DID/model
if [ -L "$JD/config.json" ] && cmp -s "$JD/config.json" "$HFD/config.json" && cmp -s "$JD/sub/extra.json" "$HFD/sub/extra.json" &&
   cmp -s "$JD/model.safetensors" "$HFD/model.safetensors" && [ ! -e "$JD/.hidden" ] &&
   [ "$(readlink "$JD/tokenizer.bin")" = "$(realpath "$TMP/data")/blobs/sha256/$(sha256sum "$HFD/tokenizer.bin" | cut -d' ' -f1)" ]; then
    ok worker_lays_out_model_dir
else bad worker_lays_out_model_dir "$(ls -laR "$JD" 2>&1 | head -20)"; fi
nb=$(ls "$TMP/data/blobs/sha256" | wc -l)
C submit --model "$HFD" --calib "$TEXT" "${SMALL[@]}" --wait >/dev/null 2>"$TMP/dir2.err"
rc=$?
[ $rc = 0 ] && [ "$(grep -c '^model .*already on the server, upload skipped' "$TMP/dir2.err")" = 4 ] &&
    [ "$(ls "$TMP/data/blobs/sha256" | wc -l)" = "$nb" ] && ok submit_model_dir_dedup ||
    bad submit_model_dir_dedup "rc=$rc $(cat "$TMP/dir2.err")"
mkdir -p "$TMP/emptydir"
C submit --model "$TMP/emptydir" --calib "$TEXT" >/dev/null 2>"$TMP/dir3.err"; rc=$?
[ $rc = 7 ] && grep -q 'emptydir: the model directory holds no files' "$TMP/dir3.err" && ok submit_empty_dir_exit_7 ||
    bad submit_empty_dir_exit_7 "rc=$rc $(cat "$TMP/dir3.err")"

# 3. a client-side gate on the integer model's top-1 agreement
C submit --model "$MODEL" --calib "$TEXT" "${SMALL[@]}" --gate min_top1=100% --wait -q >"$TMP/t1.out" 2>&1
rc=$?
[ $rc = 3 ] && grep -q 'min_top1' "$TMP/t1.out" && ok client_gate_min_top1_exit_3 || bad client_gate_min_top1_exit_3 "rc=$rc $(cat "$TMP/t1.out")"

# 4. a job that fails in the worker: a checkpoint with a NaN weight (its headers pass the door;
# loading the weights finds it); and one that is no checkpoint at all, refused at the door
python3 tests/bad_inputs.py "$FX" "$TMP/bad"
C submit --model "$TMP/bad/nan.gguf" --calib "$TEXT" "${SMALL[@]}" --wait >"$TMP/fail.out" 2>"$TMP/fail.err"
rc=$?
[ $rc = 1 ] && grep -q 'failed' "$TMP/fail.out" && grep -q 'element 100 is NaN' "$TMP/fail.out" && ok failed_job_exit_1 ||
    bad failed_job_exit_1 "rc=$rc $(cat "$TMP/fail.out")"
head -c 4096 /dev/urandom >"$TMP/junk.gguf"
C submit --model "$TMP/junk.gguf" --calib "$TEXT" "${SMALL[@]}" --wait >"$TMP/junk.out" 2>"$TMP/junk.err"
rc=$?
[ $rc = 4 ] && grep -q 'HTTP 422.*field: model' "$TMP/junk.err" && ok not_a_checkpoint_rejected_exit_4 ||
    bad not_a_checkpoint_rejected_exit_4 "rc=$rc $(cat "$TMP/junk.err")"

# 5. rejected requests: a 422 names its field; unknown job; conflict
C submit --model "$MODEL" --calib "$TEXT" --method gptq >"$TMP/rej.out" 2>"$TMP/rej.err"
rc=$?
[ $rc = 4 ] && grep -q 'HTTP 422.*field: method' "$TMP/rej.err" && ok rejected_422_exit_4 || bad rejected_422_exit_4 "rc=$rc $(cat "$TMP/rej.err")"
C status 00000000-0000-4000-8000-000000000000 >/dev/null 2>"$TMP/nf.err"
rc=$?
[ $rc = 4 ] && grep -q 'HTTP 404' "$TMP/nf.err" && ok unknown_job_exit_4 || bad unknown_job_exit_4 "rc=$rc $(cat "$TMP/nf.err")"
C cancel "$ID" >/dev/null 2>"$TMP/cc.err"
rc=$?
[ $rc = 4 ] && grep -q 'HTTP 409' "$TMP/cc.err" && ok cancel_finished_exit_4 || bad cancel_finished_exit_4 "rc=$rc $(cat "$TMP/cc.err")"

# 6. unreachable server (a port nobody listens on) and bad usage
QUANTD_URL=http://127.0.0.1:1 C list >/dev/null 2>"$TMP/un.err"
rc=$?
[ $rc = 5 ] && grep -q 'unreachable' "$TMP/un.err" && ok unreachable_exit_5 || bad unreachable_exit_5 "rc=$rc $(cat "$TMP/un.err")"
C submit --model "$MODEL" >/dev/null 2>&1; rc=$?
[ $rc = 2 ] && ok usage_exit_2 || bad usage_exit_2 "rc=$rc"
C submit --model "$MODEL" --calib "$TEXT" --gate max_speed=3 >/dev/null 2>&1; rc=$?
[ $rc = 2 ] && ok bad_gate_exit_2 || bad bad_gate_exit_2 "rc=$rc"

# 7. reading: status, list, events, download
out=$(C status "$ID" 2>&1); rc=$?
[ $rc = 0 ] && grep -q "state     succeeded" <<<"$out" && grep -q "^fp32 " <<<"$out" && ok status_exit_0 || bad status_exit_0 "rc=$rc $out"
out=$(C --json list --state succeeded 2>&1); rc=$?
[ $rc = 0 ] && grep -q "$ID" <<<"$out" && ok list_json || bad list_json "rc=$rc $out"
out=$(C events "$ID" --json 2>&1); rc=$?
[ $rc = 0 ] && grep -q '"type":"state","state":"succeeded"' <<<"$out" && grep -q '"phase":"optimize"' <<<"$out" &&
    ok events_json_lines || bad events_json_lines "rc=$rc $(head -c 600 <<<"$out")"
out=$(C download "$ID" --out "$TMP/dl" 2>&1); rc=$?
if [ $rc = 0 ] && [ -s "$TMP/dl/report.json" ] && cmp -s "$TMP/dl/report.json" "$TMP/data/jobs/$ID/artifacts/report.json" &&
   ! ls -A "$TMP/dl" | grep -q '\.tmp'; then ok download_artifacts
else bad download_artifacts "rc=$rc $out"; fi

# 8. --wait-timeout on a long job (exit 8), then cancel it and wait for the end (exit 1)
C submit --model "$MODEL" --calib "$TEXT" --samples 64 --seq-len 64 --epochs 1000 --wait --wait-timeout 2 -q \
    >"$TMP/long.out" 2>"$TMP/long.err"
rc=$?
LID=$(C --json list --state running 2>/dev/null | sed -n 's/^\t\t\t"id":[[:space:]]*"\([0-9a-f-]\{36\}\)".*/\1/p' | head -1)
[ -z "$LID" ] && LID=$(C --json list --state queued 2>/dev/null | sed -n 's/^\t\t\t"id":[[:space:]]*"\([0-9a-f-]\{36\}\)".*/\1/p' | head -1)
[ $rc = 8 ] && [ -n "$LID" ] && ok wait_timeout_exit_8 || bad wait_timeout_exit_8 "rc=$rc id=$LID $(cat "$TMP/long.err")"
if [ -n "$LID" ]; then
    C cancel "$LID" >"$TMP/cancel.out" 2>&1; rc=$?
    [ $rc = 0 ] && grep -q 'cancel requested' "$TMP/cancel.out" && ok cancel_exit_0 || bad cancel_exit_0 "rc=$rc $(cat "$TMP/cancel.out")"
    timeout 60 "$Q" client wait "$LID" >"$TMP/cw.out" 2>&1; rc=$?
    [ $rc = 1 ] && grep -q 'cancelled' "$TMP/cw.out" && ok wait_cancelled_exit_1 || bad wait_cancelled_exit_1 "rc=$rc $(cat "$TMP/cw.out")"
fi

# 9. bearer tokens: refused without one (4), accepted from QUANTD_TOKEN
"$Q" serve --gen-token submit >"$TMP/tokens" 2>"$TMP/tok.err"
TOKEN=$(sed -n 's/^token[^:]*: //p' "$TMP/tok.err")
AURL=; start auth --tokens "$TMP/tokens" && AURL=$SURL
if [ -n "$AURL" ] && [ -n "$TOKEN" ]; then
    QUANTD_URL=$AURL C list >/dev/null 2>"$TMP/a1.err"; rc=$?
    [ $rc = 4 ] && grep -q 'HTTP 401' "$TMP/a1.err" && ok no_token_exit_4 || bad no_token_exit_4 "rc=$rc $(cat "$TMP/a1.err")"
    QUANTD_URL=$AURL QUANTD_TOKEN=$TOKEN C list >/dev/null 2>"$TMP/a2.err"; rc=$?
    [ $rc = 0 ] && ok token_from_env || bad token_from_env "rc=$rc $(cat "$TMP/a2.err")"
    QUANTD_URL=$AURL C --token "$TOKEN" submit --model "$MODEL" --calib "$TEXT" "${SMALL[@]}" >"$TMP/a3.out" 2>"$TMP/a3.err"; rc=$?
    [ $rc = 0 ] && grep -Eq '^[0-9a-f-]{36}$' "$TMP/a3.out" && ok token_flag_submit || bad token_flag_submit "rc=$rc $(cat "$TMP/a3.err")"
else
    bad auth_server_start "$(cat "$TMP/auth.err" "$TMP/tok.err" 2>/dev/null)"
fi
exit 0
