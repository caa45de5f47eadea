#!/usr/bin/env bash
# api/openapi.yaml against a strict OpenAPI 3 linter: Redocly CLI (npm @redocly/cli, pinned in
# tests/openapi/package-lock.json, installed here with `npm ci` as the dashboard test installs
# playwright-core) with its recommended-strict ruleset, every rule an error. A copy of the spec
# with one operationId removed and a dangling $ref must fail, so a linter that passes everything
# cannot pass this test. Needs node + npm (Debian nodejs, npm; installed when running as root);
# SKIPs, saying so, only when they cannot be installed. Runs offline once installed.
set -u
cd "$(dirname "$0")/.."
DIR=tests/openapi
skip() { echo "SKIP openapi_lint: $1"; exit 0; }
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm >/dev/null 2>&1 ||
            { apt-get update >/dev/null 2>&1 &&
              DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm >/dev/null 2>&1; }
    fi
    command -v node >/dev/null && command -v npm >/dev/null || skip "node/npm missing and could not be installed (Debian: nodejs npm)"
fi
if [ ! -x "$DIR/node_modules/.bin/redocly" ]; then
    (cd "$DIR" && npm ci --no-audit --no-fund >/dev/null 2>&1) ||
        skip "@redocly/cli could not be installed (npm ci in $DIR failed)"
fi
TMP=$(mktemp -d /tmp/quantd-lint.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true NO_UPDATE_NOTIFIER=1
lint() { timeout 120 "$DIR/node_modules/.bin/redocly" lint --config "$DIR/redocly.yaml" --format stylish "$1"; }
fail=0
if lint api/openapi.yaml >"$TMP/out" 2>&1; then echo "PASS openapi_lint_recommended_strict"
else echo "FAIL openapi_lint_recommended_strict:"; grep -E 'error|warning' "$TMP/out" | head -40; fail=1; fi
# the linter bites: the same file with one operationId gone and a $ref to nothing
sed -e '0,/^      operationId: /{/^      operationId: /d}' \
    -e '0,/\$ref: "#\/components\/schemas\/BlobId"/s//$ref: "#\/components\/schemas\/NoSuchSchema"/' \
    api/openapi.yaml >"$TMP/broken.yaml"
if ! lint "$TMP/broken.yaml" >"$TMP/bout" 2>&1 && grep -q 'operation-operationId' "$TMP/bout" &&
   grep -q 'no-unresolved-refs' "$TMP/bout"; then echo "PASS openapi_lint_refuses_broken_spec"
else echo "FAIL openapi_lint_refuses_broken_spec: $(grep -E 'error|valid' "$TMP/bout" | head -5)"; fail=1; fi
exit $fail
