#!/bin/bash
# The whole test suite, as README.md states it: installs what the tests need (idempotent;
# root on Debian), then runs every test of the workspace, including the real-peer tests
# (QEMU firmware in network namespaces). A missing prerequisite fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-prereqs.sh
# Every ironboot process the tests start logs at debug level into this directory, and the
# tests and Go harnesses record there every secret they make up (tests/support/src/logs.rs, the ironboot-test-support crate);
# after the suite, no log line may carry one. A directory of your own must start empty.
if [ -z "${IRONBOOT_TEST_LOG_DIR:-}" ]; then
  IRONBOOT_TEST_LOG_DIR="$PWD/target/test-logs"
  rm -rf "$IRONBOOT_TEST_LOG_DIR"
elif [ -n "$(ls -A "$IRONBOOT_TEST_LOG_DIR" 2>/dev/null)" ]; then
  echo "run-all: IRONBOOT_TEST_LOG_DIR=$IRONBOOT_TEST_LOG_DIR is not empty" >&2
  exit 1
fi
mkdir -p "$IRONBOOT_TEST_LOG_DIR"
export IRONBOOT_TEST_LOG_DIR
cargo test --workspace --all-targets --locked "$@"
# Every fuzz target for a bounded time from its kept corpus (FUZZ_SECONDS, default 20).
tests/fuzz-smoke.sh
# No secret in any log line of the suite (fails naming the file and line).
tests/check-log-secrets.py "$IRONBOOT_TEST_LOG_DIR"
