#!/usr/bin/env bash
# `quantd quantize` end to end on stories260K with a tiny budget: the artifact directory it
# writes (model.qint.safetensors, encodings.json, fp-folded/ with config, weights and
# tokenizer, report.json) is complete and self-contained: `quantd eval` and `quantd generate`
# run the integer artifact with no --tokenizer, from a copy of the directory moved elsewhere;
# fp-folded/ loads as a Hugging Face checkpoint; the report's sizes and hashes are the files';
# --encodings-version 0.6.1 switches the AIMET format and a bad value is refused; --recompute on
# writes the same integer model.
set -u
. "$(dirname "$0")/e2e_common.inc" # Q, FX, MODEL, TEXT, TMP (removed at exit), ok, bad, check

O=$TMP/out
"$Q" quantize --model "$MODEL" --calib "$TEXT" --eval-split 0.5 --samples 4 --seq-len 64 \
    --epochs 1 --out "$O" --quiet >"$TMP/q.out" 2>"$TMP/q.err"
rc=$?
check quantize_runs '[ $rc = 0 ] && [ "$(cat "$TMP/q.out")" = "$O/report.json" ]' "rc=$rc $(tail -c 400 "$TMP/q.err")"
for f in report.json model.qint.safetensors encodings.json fp-folded/config.json \
         fp-folded/model.safetensors fp-folded/tokenizer.bin; do
    check "artifact_${f//\//_}" '[ -s "$O/$f" ]' "$O/$f missing"
done
R=$O/report.json
check report_int_runtime 'jq -e ".eval.int.ppl > 1 and .eval.int.kl >= 0 and .eval.int.top1 > 0.5" "$R" >/dev/null' "$(jq -c .eval.int "$R" 2>&1)"
check report_qint_bytes '[ "$(jq .size.qint_bytes "$R")" = "$(stat -c %s "$O/model.qint.safetensors")" ]'
check report_encodings_bytes '[ "$(jq '"'"'.artifacts["encodings.json"].bytes'"'"' "$R")" = "$(stat -c %s "$O/encodings.json")" ]'
fb=$(( $(stat -c %s "$O/fp-folded/config.json") + $(stat -c %s "$O/fp-folded/model.safetensors") + $(stat -c %s "$O/fp-folded/tokenizer.bin") ))
check report_fp_folded_bytes '[ "$(jq '"'"'.artifacts["fp-folded"].bytes'"'"' "$R")" = "$fb" ]'
check report_ratios 'jq -e "(.size.ratio_fp32 > 3) and (.size.ratio_fp16 > 1.5) and (.size.weight_bits_per_weight > 8) and (.size.weight_bits_per_weight < 9)" "$R" >/dev/null' "$(jq -c .size "$R")"
check report_model_sha256 '[ "$(jq -r .inputs.sha256.model "$R")" = "$(sha256sum "$MODEL" | cut -d" " -f1)" ]'
check report_calib_sha256 '[ "$(jq -r .inputs.sha256.calibration "$R")" = "$(sha256sum "$TEXT" | cut -d" " -f1)" ]'
check report_per_layer 'jq -e "(.per_layer | length) == 5 and all(.per_layer[]; .mse > 0 and .mse_isolated > 0)" "$R" >/dev/null'
check encodings_1_0_0 'jq -e "(.version == \"1.0.0\") and (.activation_encodings | type == \"array\") and (.param_encodings | length) > 0" "$O/encodings.json" >/dev/null'

# the directory is self-contained: move a copy away from the checkpoint and use it there
mv "$O" "$TMP/moved"
A=$TMP/moved
out=$("$Q" eval --model "$A/model.qint.safetensors" --data "$TEXT" --json 2>&1); rc=$?
pi=$(printf '%s' "$out" | jq -r 'select(.runtime == "int") | .ppl' 2>/dev/null)
check eval_int_artifact '[ $rc = 0 ] && [ -n "$pi" ]' "rc=$rc $out"
pf=$("$Q" eval --model "$MODEL" --data "$TEXT" --json 2>/dev/null | jq -r .ppl)
check eval_int_close_to_fp32 'awk -v a="$pi" -v b="$pf" "BEGIN { exit !(a > b && a < 1.1 * b) }"' "int $pi fp32 $pf"
out=$("$Q" generate --model "$A/model.qint.safetensors" -n 40 2>&1); rc=$?
check generate_int_artifact '[ $rc = 0 ] && [[ "$out" == "Once upon a time"* ]] && [ ${#out} -gt 80 ]' "rc=$rc $out"
out=$("$Q" eval --model "$A/fp-folded" --data "$TEXT" --json 2>&1); rc=$?
pff=$(printf '%s' "$out" | jq -r 'select(.runtime == "fp32") | .ppl' 2>/dev/null)
check eval_fp_folded 'awk -v a="$pff" -v b="$pf" "BEGIN { exit !(a > 0.99 * b && a < 1.01 * b) }"' "rc=$rc fp-folded $out vs fp32 $pf"

# recomputing the activations in the backward changes nothing but memory: the same integer model
# and encodings, the report saying which ran
"$Q" quantize --model "$MODEL" --calib "$TEXT" --eval-split 0.5 --samples 4 --seq-len 64 \
    --epochs 1 --recompute on --out "$TMP/rc" --quiet >/dev/null 2>"$TMP/rc.err"
check recompute_same_model 'cmp -s "$A/model.qint.safetensors" "$TMP/rc/model.qint.safetensors" && cmp -s "$A/encodings.json" "$TMP/rc/encodings.json"' "$(tail -c 300 "$TMP/rc.err")"
check recompute_reported '[ "$(jq .budget.recompute "$TMP/rc/report.json")" = true ] && [ "$(jq .budget.recompute "$A/report.json")" = false ]' "$(jq -c .budget "$TMP/rc/report.json" "$A/report.json" 2>&1)"
out=$("$Q" quantize --model "$MODEL" --calib "$TEXT" --out "$TMP/never" --recompute maybe 2>&1); rc=$?
check recompute_bad_value '[ $rc = 2 ] && printf "%s" "$out" | grep -q "is not auto, on or off"' "rc=$rc $out"

# AIMET 0.6.1 on request; a bad version is refused before any work
"$Q" quantize --model "$MODEL" --calib "$TEXT" --method rtn --samples 2 --seq-len 32 --epochs 1 \
    --encodings-version 0.6.1 --out "$TMP/o061" --quiet >/dev/null 2>"$TMP/q2.err"
check encodings_0_6_1 'jq -e "(.version == \"0.6.1\") and (.activation_encodings | type == \"object\") and (.param_encodings[\"model.layers.0.mlp.down_proj.weight\"] | length) == 64" "$TMP/o061/encodings.json" >/dev/null' "$(tail -c 300 "$TMP/q2.err")"
out=$("$Q" quantize --model "$MODEL" --calib "$TEXT" --out "$TMP/never" --encodings-version 2 2>&1); rc=$?
check encodings_version_refused '[ $rc = 2 ] && [ ! -e "$TMP/never" ] && printf "%s" "$out" | grep -q -- --encodings-version' "rc=$rc $out"
# the bit map is checked before any work: a class the integer model cannot take at that width is
# refused at once (it used to run the whole optimizer and fail at export), with no report
out=$(timeout 20 "$Q" quantize --model "$MODEL" --calib "$TEXT" --abits qkv=4 --out "$TMP/ab4" 2>&1); rc=$?
check abits_refused_before_work '[ $rc = 1 ] && [ ! -e "$TMP/ab4/report.json" ] && printf "%s" "$out" | grep -q "abits: class qkv: 4 bits: the integer model takes 8"' "rc=$rc $out"
out=$(timeout 20 "$Q" quantize --model "$MODEL" --calib "$TEXT" --abits silu=16 --out "$TMP/ab16" 2>&1); rc=$?
check abits_16_refused_before_work '[ $rc = 1 ] && [ ! -e "$TMP/ab16/report.json" ] && printf "%s" "$out" | grep -q "class silu: 16 bits"' "rc=$rc $out"
