#!/usr/bin/env bash
# The dashboard in a real browser: starts the real binary on port 0 (once without auth, once
# with a token file), then tests/browser/dashboard.test.mjs drives headless Debian chromium
# through playwright-core: upload the fixtures through the form, see the API's 422 next to its
# field, submit a small job, watch it finish, read the report, save a screenshot.
# Needs node + npm and chromium (Debian packages nodejs, npm, chromium); installs them when
# running as root, and SKIPs, saying so, only when they cannot be installed.
set -u
cd "$(dirname "$0")/.."
Q=${QUANTD:?set QUANTD to the quantd binary}
FX=${QD_FIXTURES:?set QD_FIXTURES to the fixtures directory}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
BR=tests/browser
SHOT=$(realpath -m "${BUILD:-build}/e2e/dashboard.png")

skip() { echo "SKIP dashboard: $1"; exit 0; }
apt_install() { # installs Debian packages when we are root and apt-get exists
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 ||
        { apt-get update >/dev/null 2>&1 &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1; }
}
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm || skip "node/npm missing and could not be installed (Debian: nodejs npm)"
fi
major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
[ "$major" -ge 20 ] || skip "playwright-core needs node >= 20, found $(node --version 2>/dev/null || echo none)"
if [ ! -x "$CHROMIUM" ]; then
    apt_install chromium || skip "chromium missing and could not be installed (Debian: chromium)"
fi
if [ ! -d "$BR/node_modules/playwright-core" ]; then
    (cd "$BR" && npm ci --no-audit --no-fund >/dev/null 2>&1) ||
        skip "playwright-core could not be installed (npm ci in $BR failed)"
fi

. tests/e2e_common.inc
python3 tests/bad_inputs.py "$FX" "$TMP/bad"

start open && URL=$SURL || { echo "FAIL dashboard_server_start: $(cat "$TMP/open.err")"; exit 1; }
"$Q" serve --gen-token admin 2>"$TMP/tok.err" >"$TMP/tokens"
TOKEN=$(sed -n 's/^token[^:]*: //p' "$TMP/tok.err")
AUTH_URL=
if [ -n "$TOKEN" ]; then
    start auth --tokens "$TMP/tokens" && AUTH_URL=$SURL
fi
[ -n "$AUTH_URL" ] || echo "  (no auth server: the token checks are left out)"

QD_URL=$URL QD_AUTH_URL=$AUTH_URL QD_AUTH_TOKEN=$TOKEN QD_SHOT=$SHOT CHROMIUM=$CHROMIUM \
QD_MODEL=$FX/models/stories260K.gguf QD_CALIB=$FX/text/tinystories-valid-excerpt.txt \
QD_HF=$FX/models/stories260K-hf QD_TOK=$FX/models/tok512.bin QD_NAN=$TMP/bad/nan.gguf \
    timeout 240 node "$BR/dashboard.test.mjs"
rc=$?
if [ $rc -ne 0 ]; then
    echo "  server log:"; tail -n 20 "$TMP/open.err" | sed 's/^/    /'
fi
exit $rc
