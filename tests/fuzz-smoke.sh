#!/bin/bash
# Bounded fuzzing of every cargo-fuzz target (fuzz/, nightly): each runs FUZZ_SECONDS
# (default 20) starting from its kept corpus (fuzz/corpus/<target>, read only here: new
# inputs go to a scratch directory). A crash, leak or timeout fails the run and leaves the
# input under target/fuzz-smoke/ with the command that reproduces it. Called by
# tests/run-all.sh after the test suite; tests/install-prereqs.sh installs cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-20}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz-smoke: cargo-fuzz is missing: run sudo tests/install-prereqs.sh" >&2
  exit 1
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz-smoke: the nightly toolchain is missing (cargo-fuzz needs it): rustup toolchain install nightly --profile minimal" >&2
  exit 1
fi
keep=target/fuzz-smoke
rm -rf "$keep"
mkdir -p "$keep"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd fuzz
failed=()
for t in $(cargo +nightly fuzz list); do
  [ -d "corpus/$t" ] || { echo "fuzz-smoke: no corpus/$t" >&2; exit 1; }
  mkdir -p "$scratch/$t"
  echo "== fuzzing $t for ${secs}s"
  if ! cargo +nightly fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$secs" -artifact_prefix="../$keep/$t-" -print_final_stats=1; then
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz-smoke: FAILED: ${failed[*]}; inputs in $keep/ (reproduce: cd fuzz && cargo +nightly fuzz run <target> ../$keep/<file>)" >&2
  exit 1
fi
echo "fuzz-smoke: every target ran ${secs}s without a finding"
