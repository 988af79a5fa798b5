#!/usr/bin/env bash
# Installs what rappel's tests need when it is missing (Debian packages, cargo-fuzz), then runs every test:
# unit and integration tests (SIPp, network namespaces), clippy, docs, and a short smoke of each fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v sipp >/dev/null || need_pkgs+=(sip-tester)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v iptables >/dev/null || need_pkgs+=(iptables)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need_pkgs+=(dnsmasq-base)
command -v chromium >/dev/null || need_pkgs+=(chromium)  # tests/web_browser.rs
command -v baresip >/dev/null || need_pkgs+=(baresip-core)  # tests/baresip_interop.rs
if ((${#need_pkgs[@]})); then
  echo "== installing ${need_pkgs[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
echo "== cargo test"
# `cargo test --all-targets` compiles examples as test harnesses; the click-to-call tests run the real binary.
cargo build --examples
cargo test --all-targets --no-fail-fast
cargo test --doc

# Fuzz smoke: a few seconds per target. Run longer with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET -- -max_total_time=600
if [ -d fuzz ] && [ "${RAPPEL_SKIP_FUZZ:-0}" != 1 ]; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet || echo "cargo-fuzz could not be installed: fuzz smoke skipped"
  fi
  if cargo fuzz --version >/dev/null 2>&1; then
    for t in $(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz list); do
      echo "== fuzz smoke: $t (10 s)"
      corpus="fuzz/corpus/$t"; mkdir -p "$corpus"
      seeds="fuzz/seeds/$t"; [ -d "$seeds" ] || seeds=""
      (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" ${seeds:+"seeds/$t"} -- -max_total_time=10 -rss_limit_mb=2048 2>&1 | tail -n 3)
    done
  fi
fi
echo "== all tests passed"
