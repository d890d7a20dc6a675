#!/usr/bin/env bash
# up.sh — install what the tests need and start the real peers; writes their
# KEY=value environment to test/peers/.env (sourced by the Makefile).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/install.sh"
# Quote every value: some hold shell metacharacters (the DSN has '&').
bash "$here/mattermost.sh" up | sed -E "s/'/'\\\\''/g; s/^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/\\1='\\2'/" > "$here/.env.tmp"
mv "$here/.env.tmp" "$here/.env"
echo "peers up: $(grep -c = "$here/.env") variables in test/peers/.env" >&2
