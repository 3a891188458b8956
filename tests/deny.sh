#!/bin/bash
# cargo deny over the whole dependency tree (deny.toml at the project root): licences,
# bans and sources always; advisories only when a RustSec advisory database is present
# locally, because it cannot be fetched on these machines. Without one it says, loudly,
# that advisories were NOT checked: never a silent pass.
# usage: tests/deny.sh          (run by .ci/run; cargo-deny from tests/install-prereqs.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deny >/dev/null ||
  { echo "deny: cargo-deny not found on PATH: run sudo tests/install-prereqs.sh" >&2; exit 1; }

cargo deny --locked check --hide-inclusion-graph licenses bans sources

# cargo deny keeps each database in a directory of its own under db-path (deny.toml).
db_root="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
db=""
for d in "$db_root"/*/; do
  if [ -d "$d/crates" ]; then db=${d%/}; break; fi
done
if [ -n "$db" ]; then
  age=$(git -C "$db" log -1 --format=%cr 2>/dev/null || echo "of unknown age")
  echo "deny: advisories from the local database $db (last updated $age), not fetched"
  cargo deny --locked --offline check --hide-inclusion-graph advisories
else
  echo "deny: ================================================================"
  echo "deny: ADVISORIES WERE NOT CHECKED: no RustSec advisory database under"
  echo "deny: $db_root and none can be fetched here. Licences, bans and sources"
  echo "deny: were checked. To check advisories, put a clone of the advisory"
  echo "deny: database in that directory and run tests/deny.sh again."
  echo "deny: ================================================================"
fi
