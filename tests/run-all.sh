#!/bin/bash
# The whole test suite, as README.md states it: installs what the tests need (idempotent;
# root on Debian), then runs every test of the workspace, including the real-peer tests
# (QEMU firmware in network namespaces). A missing prerequisite fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-prereqs.sh
cargo test --workspace --all-targets --locked "$@"
# Every fuzz target for a bounded time from its kept corpus (FUZZ_SECONDS, default 20).
tests/fuzz-smoke.sh
