#!/usr/bin/env bash
# Installs the Debian packages sluice needs to build, test and run the demo, but only the
# missing ones. Safe to run repeatedly.
set -euo pipefail

packages=(
  clang-19 llvm-19 libbpf-dev   # compiling bpf/*.bpf.c
  bpftool                       # ABI layout test, inspecting attached programs
  iproute2 iputils-ping         # the lab and its checks
  nftables iptables             # e2e checks that sluice adds no firewall rules
  containernetworking-plugins   # reference CNI plugins chained after sluice-cni in tests
  etcd-server etcd-client       # cluster-wide state (kvstore: etcd) and its tests
  protobuf-compiler libprotobuf-dev  # etcd-client compiles etcd's protos at build time
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo ">>> installing missing packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo ">>> all packages present"
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust 1.95 (rustup)" >&2; exit 1; }
