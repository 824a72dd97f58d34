#!/usr/bin/env bash
# The test command (`npm test`): type-check, lint, then every test, lab tests
# included. Lab tests need root and the Debian tools from `npm run setup`; they
# fail (never skip) and say what is missing when they are not there.
set -uo pipefail
cd "$(dirname "$0")/.."
results=$(mktemp)
trap 'rm -f "$results"' EXIT

echo "== typecheck"
tsc -p tsconfig.json || { echo "typecheck: 0 passed, 1 failed"; exit 1; }

echo "== lint"
eslint . || { echo "lint: 0 passed, 1 failed"; exit 1; }

echo "== tests"
vitest run --reporter=default --reporter=json --outputFile.json="$results" "$@"
status=$?
# One plain closing line for CI: 'N passed, N failed'.
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed` + (r.numPendingTests ? `, ${r.numPendingTests} skipped` : ""));
' "$results" 2>/dev/null || echo "tests: 0 passed, 1 failed"
exit $status
