#!/usr/bin/env bash
# Installs what the build, the tests and the demo need, if it is missing:
# Debian 12 / Ubuntu 24.04 packages. As root it runs apt-get; otherwise it
# prints the command to run. --parity adds PyTorch (Debian's python3-torch)
# for the parity test against tools/torch_reference.py; --cluster adds Slurm,
# munge and iproute2 for the cluster tests (tests/cluster).
set -euo pipefail

packages=(cmake ninja-build g++ libyaml-cpp-dev libspdlog-dev catch2 libopenmpi-dev openmpi-bin zlib1g-dev fortunes
          libsentencepiece-dev sentencepiece)
for flag in "$@"; do
  case "$flag" in
    --parity) packages+=(python3-torch python3-yaml python3-numpy) ;;
    --cluster) packages+=(slurm-wlm munge iproute2 util-linux) ;;
    *) echo "setup: unknown option '$flag' (--parity, --cluster)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: not root; run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
