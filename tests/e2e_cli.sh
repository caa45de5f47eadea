#!/usr/bin/env bash
# The CLI end to end on the fixtures: generate's greedy text for the three stories260K forms,
# eval's identical perplexity, inspect's summary, and clear errors for bad input.
set -u
Q=${QUANTD:?}
FX=${QD_FIXTURES:?}
M=$FX/models
want="Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
ok() { echo "PASS $1"; }
bad() { echo "FAIL $1: $2"; }

for form in "stories260K.gguf" "stories260K-hf --tokenizer $M/tok512.bin" "stories260K.llama2c.bin --tokenizer $M/tok512.bin"; do
    set -- $form
    out=$("$Q" generate --model "$M/$1" "${@:2}" -n 60 2>&1)
    case "$out" in "$want"*) ok "generate_$1";; *) bad "generate_$1" "$out";; esac
done

ppls=()
for form in "stories260K.gguf" "stories260K-hf" "stories260K.llama2c.bin"; do
    out=$("$Q" eval --model "$M/$form" --tokenizer "$M/tok512.bin" --data "$FX/text/tinystories-valid-excerpt.txt" --json 2>&1)
    p=$(printf '%s' "$out" | sed -n 's/.*"ppl":\([0-9.]*\).*/\1/p')
    if [ -n "$p" ]; then ok "eval_$form"; ppls+=("$p"); else bad "eval_$form" "$out"; fi
done
if [ ${#ppls[@]} = 3 ] && [ "${ppls[0]}" = "${ppls[1]}" ] && [ "${ppls[0]}" = "${ppls[2]}" ]; then
    ok eval_same_ppl_three_forms
else
    bad eval_same_ppl_three_forms "${ppls[*]}"
fi

out=$("$Q" inspect "$M/stories260K.gguf" 2>&1)
if printf '%s' "$out" | grep -q "dim 64, hidden 172, layers 5, heads 8, kv heads 4" &&
   printf '%s' "$out" | grep -q "blk.0.attn_q.weight"; then ok inspect_gguf; else bad inspect_gguf "$out"; fi
out=$("$Q" inspect --json "$M/llama-2-tiny-random.gguf" 2>&1)
case "$out" in *'"vocab_size":32000'*'"dtype":"F16"'*) ok inspect_f16_json;; *) bad inspect_f16_json "$out";; esac

# Bad input: a clear message naming the file, a non-zero exit, never a crash.
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
head -c 1000 "$M/stories260K.gguf" > "$tmp/trunc.gguf"
out=$("$Q" eval --model "$tmp/trunc.gguf" --data "$FX/text/tinystories-valid-excerpt.txt" 2>&1); rc=$?
if [ $rc = 1 ] && printf '%s' "$out" | grep -q "trunc.gguf"; then ok eval_truncated_model; else bad eval_truncated_model "rc=$rc $out"; fi
out=$("$Q" generate --model "$M/stories260K.llama2c.bin" 2>&1); rc=$?
if [ $rc = 1 ] && printf '%s' "$out" | grep -q -- "--tokenizer"; then ok generate_needs_tokenizer; else bad generate_needs_tokenizer "rc=$rc $out"; fi
out=$("$Q" eval --model "$M/stories260K.gguf" --data "$FX/text/tinystories-valid-excerpt.txt" --ctx 1 2>&1); rc=$?
if [ $rc = 2 ] && printf '%s' "$out" | grep -q -- "--ctx"; then ok eval_bad_ctx; else bad eval_bad_ctx "rc=$rc $out"; fi
printf '' > "$tmp/empty.txt"
out=$("$Q" eval --model "$M/stories260K.gguf" --data "$tmp/empty.txt" 2>&1); rc=$?
if [ $rc = 1 ] && printf '%s' "$out" | grep -q "empty.txt"; then ok eval_empty_data; else bad eval_empty_data "rc=$rc $out"; fi
out=$("$Q" frobnicate 2>&1); rc=$?
if [ $rc = 2 ]; then ok unknown_command; else bad unknown_command "rc=$rc"; fi
