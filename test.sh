#!/usr/bin/env bash
# All of Tandem's tests: formatting, lints, then unit, property, scenario, planted-bug and swarm
# tests. Fails on the first problem.
set -euo pipefail
cd "$(dirname "$0")"

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
