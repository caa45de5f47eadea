#!/usr/bin/env bash
# Layout check: the arrows between the source folders run one way (README's folder table).
# Every `#include "..."` in base/, api/, quant/, worker/, server/ and cli/ must name a file of
# the same room or of a lower one, by these ranks:
#   base 0 < api 1 < quant top (model, vocab, progress) 2 < quant/io 3 < quant/text, quant/fp 4
#   < quant/sim 5 < quant/opt, quant/rt 6 < quant/export 7 < quant top (quantize, report and
#   the rest) 8 < worker 9 < server 10 < cli 11
# (two rooms of one rank may not include each other); api/ includes only base/ and api/;
# server/ and api/ never include quant/. And the compiled core (base/ and quant/ objects) neither
# defines nor references a symbol of the service: srv_, api_, wk_ or MHD_.
# Prints one PASS/FAIL line per rule; each failure lists the offending lines.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}

room_of() {
    case "$1" in
    base/*) echo base ;;
    api/*) echo api ;;
    quant/model.[ch] | quant/vocab.[ch] | quant/progress.h) echo quant-model ;;
    quant/io/* | quant/text/* | quant/fp/* | quant/sim/* | quant/opt/* | quant/rt/* | quant/export/*)
        local r=${1#quant/}
        echo "quant/${r%%/*}" ;;
    quant/*) echo quant-pipeline ;;
    worker/*) echo worker ;;
    server/*) echo server ;;
    cli/*) echo cli ;;
    *) echo other ;;
    esac
}

rank_of() {
    case "$1" in
    base) echo 0 ;;
    api) echo 1 ;;
    quant-model) echo 2 ;;
    quant/io) echo 3 ;;
    quant/text | quant/fp) echo 4 ;;
    quant/sim) echo 5 ;;
    quant/opt | quant/rt) echo 6 ;;
    quant/export) echo 7 ;;
    quant-pipeline) echo 8 ;;
    worker) echo 9 ;;
    server) echo 10 ;;
    cli) echo 11 ;;
    *) echo 99 ;;
    esac
}

# "file target" for every quoted include of the checked folders (targets without a folder are
# taken relative to the including file).
includes=$(grep -Ho '^[[:space:]]*#[[:space:]]*include[[:space:]]*"[^"]*"' \
               $(find base api quant worker server cli -name '*.[ch]' | sort) |
           sed -E 's/^([^:]*):.*"([^"]*)"$/\1 \2/' |
           while read -r f t; do
               case "$t" in */*) ;; *) t="$(dirname "$f")/$t" ;; esac
               echo "$f $t"
           done)

if [ -z "$includes" ]; then
    echo "FAIL includes_point_down: no includes found (run from the repository)"
    exit 1
fi

bad_quant=$(awk '($1 ~ /^(server|api)\//) && ($2 ~ /^quant\//)' <<<"$includes")
if [ -z "$bad_quant" ]; then echo "PASS server_api_never_include_quant"
else echo "FAIL server_api_never_include_quant:"; sed 's/ / includes /; s/^/    /' <<<"$bad_quant"; fi

bad_api=$(awk '($1 ~ /^api\//) && ($2 !~ /^(base|api)\//)' <<<"$includes")
if [ -z "$bad_api" ]; then echo "PASS api_includes_only_base"
else echo "FAIL api_includes_only_base:"; sed 's/ / includes /; s/^/    /' <<<"$bad_api"; fi

bad_rank=""
while read -r f t; do
    rf=$(room_of "$f"); rt=$(room_of "$t")
    [ "$rf" = "$rt" ] && continue
    kf=$(rank_of "$rf"); kt=$(rank_of "$rt")
    if [ "$kt" -ge "$kf" ]; then
        bad_rank+="    $f ($rf, rank $kf) includes $t ($rt, rank $kt)"$'\n'
    fi
done <<<"$includes"
if [ -z "$bad_rank" ]; then echo "PASS includes_point_down"
else printf 'FAIL includes_point_down:\n%s' "$bad_rank"; fi

objs=$(find "$BUILD/base" "$BUILD/quant" -name '*.o' 2>/dev/null | sort)
if [ -z "$objs" ]; then
    echo "FAIL core_objects_free_of_service_symbols: no objects under $BUILD/base, $BUILD/quant (build first)"
else
    bad_sym=$(nm -A $objs | awk '{ s = $NF; if (s ~ /^(srv_|api_|wk_|MHD_)/) print "    " $0 }')
    if [ -z "$bad_sym" ]; then echo "PASS core_objects_free_of_service_symbols"
    else echo "FAIL core_objects_free_of_service_symbols:"; echo "$bad_sym"; fi
fi
