#!/usr/bin/env bash
# `quantd tokenize` end to end (the real binary): ids equal to the Rust tokenizers library's
# for the SmolLM2 tokenizer.json, --jsonl gives one array per line in order, --bos and no BOS
# by default, --model finds the checkpoint's own vocabulary, --out writes pre-tokenized data
# that eval and quantize read with no tokenizer (same perplexity as from the text), and bad
# input is refused with the file, line or flag named.
set -u
. "$(dirname "$0")/e2e_common.inc" # Q, FX, TEXT, TMP (removed at exit), ok, bad, check
M=$FX/models
SMOL=$FX/tokenizers/smollm2-135m/tokenizer.json
L3=tests/data/llama3style-4k.tokenizer.json

# ids printed by Rust tokenizers 0.22 (@anush008/tokenizers) for these texts, no special tokens
want='[19556, 905, 216, 33, 34, 35, 36, 37, 216, 1, 216, 1792]'
out=$("$Q" tokenize --tokenizer "$SMOL" --text 'Hello world 12345 <|im_start|>  x' 2>&1)
check smollm2_text_ids '[ "$out" = "$want" ]' "$out"
printf 'Hello world 12345 <|im_start|>  x' > "$TMP/hello.txt"
out=$("$Q" tokenize --model "$FX/tokenizers/smollm2-135m" --file "$TMP/hello.txt" 2>&1)
check model_dir_and_file '[ "$out" = "$want" ]' "$out"

printf '%s\n' '{"text":"Hello world"}' '' '{"text":"don'"'"'t stop\n\t12"}' '{"id":3,"text":"日本語 🙂"}' > "$TMP/in.jsonl"
"$Q" tokenize --tokenizer "$SMOL" --jsonl "$TMP/in.jsonl" > "$TMP/jsonl.out" 2>"$TMP/err"
rc=$?
a=$("$Q" tokenize --tokenizer "$SMOL" --text 'Hello world')
b=$("$Q" tokenize --tokenizer "$SMOL" --text "$(printf "don't stop\n\t12")")
c=$("$Q" tokenize --tokenizer "$SMOL" --text '日本語 🙂')
check jsonl_one_array_per_line_in_order '[ $rc = 0 ] && [ "$(printf "%s\n" "$a" "$b" "$c")" = "$(cat "$TMP/jsonl.out")" ]' "rc=$rc $(cat "$TMP/jsonl.out" "$TMP/err")"

out=$("$Q" tokenize --tokenizer "$L3" --text 'Hello')
check no_bos_by_default '[ "$out" = "[39, 301, 385]" ]' "$out"
out=$("$Q" tokenize --tokenizer "$L3" --text 'Hello' --bos)
check bos_flag '[ "$out" = "[4256, 39, 301, 385]" ]' "$out"

out=$("$Q" tokenize --tokenizer "$SMOL" --text ' Hi!' --pieces)
check pieces '[ "$out" = "$(printf "%s\t%s\n" 21041 "\" Hi\"" 17 "\"!\"")" ]' "$out"

a=$("$Q" tokenize --model "$M/stories260K.gguf" --text 'Once upon a time' 2>&1)
b=$("$Q" tokenize --tokenizer "$M/tok512.bin" --text 'Once upon a time' 2>&1)
check model_own_vocab '[ -n "$a" ] && [ "$a" = "$b" ] && [ "${a#[}" != "$a" ]' "$a / $b"
out=$("$Q" tokenize --model "$M/stories260K.llama2c.bin" --text 'x' 2>&1); rc=$?
check model_without_tokenizer '[ $rc = 1 ] && printf "%s" "$out" | grep -q -- "--tokenizer"' "rc=$rc $out"

# pre-tokenized calibration data: the same stream as the .jsonl loader builds (BOS per text)
tr -d '\r' < "$TEXT" | head -n 60 | jq -R -c 'select(length > 0) | {text: .}' > "$TMP/stories.jsonl"
"$Q" tokenize --model "$M/stories260K.gguf" --jsonl "$TMP/stories.jsonl" --bos --out "$TMP/s.u32.bin" 2>"$TMP/err"
rc=$?
n=$(( $(stat -c %s "$TMP/s.u32.bin" 2>/dev/null || echo 0) / 4 ))
check out_u32 '[ $rc = 0 ] && [ $n -gt 1000 ] && grep -q "tokens -> $TMP/s.u32.bin (uint32)" "$TMP/err"' "rc=$rc n=$n $(cat "$TMP/err")"
"$Q" tokenize --model "$M/stories260K.gguf" --jsonl "$TMP/stories.jsonl" --bos --out "$TMP/s.u16.bin" 2>/dev/null
check out_u16_half_size '[ "$(stat -c %s "$TMP/s.u16.bin")" = $(( n * 2 )) ]'
p_text=$("$Q" eval --model "$M/stories260K.gguf" --data "$TMP/stories.jsonl" --json 2>&1 | jq -r .ppl)
p_u32=$("$Q" eval --model "$M/stories260K.gguf" --data "$TMP/s.u32.bin" --json 2>&1 | jq -r .ppl)
p_u16=$("$Q" eval --model "$M/stories260K.gguf" --data "$TMP/s.u16.bin" --json 2>&1 | jq -r .ppl)
check eval_pretokenized_same_ppl '[ -n "$p_text" ] && [ "$p_text" != null ] && [ "$p_text" = "$p_u32" ] && [ "$p_text" = "$p_u16" ]' "$p_text $p_u32 $p_u16"
# a checkpoint with no vocabulary and no tokenizer beside it: pre-tokenized data needs none
out=$("$Q" eval --model "$M/stories260K.llama2c.bin" --data "$TMP/s.u32.bin" --json 2>&1)
check eval_u32_needs_no_tokenizer '[ "$(printf "%s" "$out" | jq -r .ppl)" = "$p_u32" ]' "$out"
"$Q" quantize --model "$M/stories260K.llama2c.bin" --calib "$TMP/s.u32.bin" --samples 2 \
    --seq-len 32 --epochs 1 --out "$TMP/q" --quiet >"$TMP/q.out" 2>"$TMP/q.err"
rc=$?
check quantize_u32_needs_no_tokenizer '[ $rc = 0 ] && [ -s "$TMP/q/report.json" ]' "rc=$rc $(tail -c 400 "$TMP/q.err")"

# bad input
out=$("$Q" tokenize --tokenizer "$SMOL" --model "$M/stories260K.gguf" --text x 2>&1); rc=$?
check both_sources_refused '[ $rc = 2 ] && printf "%s" "$out" | grep -q -- "--tokenizer or --model"' "rc=$rc $out"
out=$("$Q" tokenize --tokenizer "$SMOL" 2>&1); rc=$?
check no_input_refused '[ $rc = 2 ] && printf "%s" "$out" | grep -q -- "--text, --file or --jsonl"' "rc=$rc $out"
out=$("$Q" tokenize --tokenizer "$SMOL" --text x --out "$TMP/x.txt" 2>&1); rc=$?
check out_name_refused '[ $rc = 2 ] && printf "%s" "$out" | grep -q "u32.bin" && [ ! -e "$TMP/x.txt" ]' "rc=$rc $out"
out=$("$Q" tokenize --tokenizer "$SMOL" --frob 2>&1); rc=$?
check unknown_option '[ $rc = 2 ]' "rc=$rc $out"
printf '%s\n' '{"text":"ok"}' '{"text":' > "$TMP/bad.jsonl"
out=$("$Q" tokenize --tokenizer "$SMOL" --jsonl "$TMP/bad.jsonl" --out "$TMP/bad.u32.bin" 2>&1); rc=$?
check jsonl_bad_line_named '[ $rc = 1 ] && printf "%s" "$out" | grep -q "bad.jsonl: line 2" && [ ! -e "$TMP/bad.u32.bin" ]' "rc=$rc $out"
printf '%s\n' '{"txt":"ok"}' > "$TMP/nofield.jsonl"
out=$("$Q" tokenize --tokenizer "$SMOL" --jsonl "$TMP/nofield.jsonl" 2>&1); rc=$?
check jsonl_missing_text '[ $rc = 1 ] && printf "%s" "$out" | grep -q "line 1: no string \"text\" field"' "rc=$rc $out"
printf 'ab\xffcd' > "$TMP/bad.txt"
out=$("$Q" tokenize --tokenizer "$SMOL" --file "$TMP/bad.txt" 2>&1); rc=$?
check invalid_utf8_named '[ $rc = 1 ] && printf "%s" "$out" | grep -q "bad.txt: .*byte offset 2"' "rc=$rc $out"
printf '{"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"pre_tokenizer":{"type":"BertPreTokenizer"}}' > "$TMP/tokenizer.json"
out=$("$Q" tokenize --tokenizer "$TMP/tokenizer.json" --text a 2>&1); rc=$?
check unsupported_pretokenizer_named '[ $rc = 1 ] && printf "%s" "$out" | grep -q "tokenizer.json: pre_tokenizer.type: \"BertPreTokenizer\" is not supported"' "rc=$rc $out"
