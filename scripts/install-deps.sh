#!/usr/bin/env bash
# Installs the system packages tandem needs on Debian 12; does nothing when all are present.
# Used by both README commands and by .ci/run.
set -euo pipefail

PACKAGES=(
  pkg-config
  libgstreamer1.0-dev
  libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly
  gstreamer1.0-libav
  gstreamer1.0-tools
  gstreamer1.0-x
  ffmpeg
  # The seek benchmark's HTTP baseline: GStreamer reading range requests from nginx on loopback.
  nginx-light
  # The shaped link (tests/src/link.rs): network namespaces, and ping as its round-trip oracle.
  iproute2
  iputils-ping
  # The window test: a virtual display and a screenshot of it; the screen test: a terminal.
  xvfb
  x11-apps
  tmux
  # The relay tests: network namespaces and veth pairs (`ip netns`, `ip link`).
  iproute2
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
