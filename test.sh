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
# The tests named *_on_netns (and tests/netns.rs) run clusters on network namespaces; they need
# root, and pass without running otherwise.
if [ "$(id -u)" -ne 0 ]; then
    echo "warning: not root: the netns tests (tandem up --netns) are skipped" >&2
fi
cargo test --workspace --locked
