#!/usr/bin/env bash
# One command for the whole test suite on a fresh Debian machine (as root): Debian packages, npm
# dependencies, lint and format check, build, package checks, the integration lab, then every test (unit + integration)
# on the system Node, and the unit tests and the demo on Node 22 and 24 too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/lab/install-packages.sh
# npm ci rejects this npm's lockfile (it omits other platforms' optional packages); install honours the lock
npm install --no-audit --no-fund
npm run lint
npm run build
npm run api:check
node scripts/check-package.mjs
npm run typecheck
bash scripts/test-node-lines.sh
eval "$(bash scripts/lab/up.sh)"
export VS_LAB_ENV="$VS_LAB_DIR/lab.env"
npx vitest run "$@"
