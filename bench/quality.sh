#!/usr/bin/env bash
# The README's accuracy table: stories260K.gguf quantized with every method at W8A8 and W4A8,
# calibrated on the first half of tinystories-valid-excerpt.txt and evaluated on the held-out
# second half (--eval-split 0.5), budget 64 samples x 256 tokens x 10 epochs (the calibration
# half holds 30 disjoint windows; the 64 samples are taken as evenly spaced overlapping ones).
# Both widths run the default budget; W4_FLAGS adds flags to the W4A8 runs only (e.g.
# W4_FLAGS="--epochs 20"). Prints a Markdown
# table of perplexity (and its increase over FP32), KL(FP32 || variant) and top-1 agreement.
# Not part of `make test`: one to two minutes per method on one core.
#   bench/quality.sh [extra quantd quantize flags...]
set -eu
cd "$(dirname "$0")/.."
QUANTD=${QUANTD:-build/quantd}
FIX=${QD_FIXTURES:-../shared/fixtures}
OUT=${OUT:-$(mktemp -d)}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
W4_FLAGS=${W4_FLAGS:-}
for w in 8 4; do
  extra=""
  [ "$w" = 4 ] && extra=$W4_FLAGS
  for m in omniquant mobilequant; do
    # shellcheck disable=SC2086
    "$QUANTD" quantize --model "$FIX/models/stories260K.gguf" \
      --calib "$FIX/text/tinystories-valid-excerpt.txt" --eval-split 0.5 \
      --method "$m" --wbits "$w" --samples 64 --seq-len 256 --epochs 10 --seed 0 --threads 1 \
      $extra --out "$OUT/w$w-$m" --quiet "$@" >/dev/null
  done
done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("| W/A | method | ppl | vs FP32 | KL | top-1 |")
print("|---|---|---|---|---|---|")
for w in (8, 4):
    a = json.load(open(f"{out}/w{w}-omniquant/report.json"))["eval"]
    b = json.load(open(f"{out}/w{w}-mobilequant/report.json"))["eval"]
    fp = a["fp32"]["ppl"]
    rows = [("FP32", a["fp32"]), ("RTN", a["rtn"]), ("SmoothQuant", a["smoothquant"]),
            ("OmniQuant", a["omniquant"]), ("MobileQuant", b["mobilequant"])]
    for name, r in rows:
        inc = "" if name == "FP32" else f"{100 * (r['ppl'] / fp - 1):+.2f}%"
        print(f"| W{w}A8 | {name} | {r['ppl']:.4f} | {inc} | {r['kl']:.4f} | {r['top1']:.3f} |")
PY
echo "reports: $OUT" >&2
