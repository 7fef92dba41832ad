#!/usr/bin/env bash
# System packages the benchmarks need that pip cannot install, from Debian: ffmpeg (cutting,
# filtering and encoding clips; ffprobe for durations), and with `anchors` FFmpeg's development
# files, which PyPI's vpdq compiles against (its apt-requirements.txt). Idempotent.
set -euo pipefail

packages=(ffmpeg)
if [ "${1:-}" = "anchors" ]; then
    packages+=(pkg-config cmake libavcodec-dev libavformat-dev libavdevice-dev libavutil-dev
               libswscale-dev libswresample-dev libavfilter-dev)
fi
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: ${packages[*]} present ($(ffmpeg -version | head -n1))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing ${missing[*]}; install them (apt-get install -y ${missing[*]}) as root" >&2
    exit 1
fi

# A fresh machine has no package lists; only update when apt cannot see a package yet.
if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
    echo "setup: apt-get update"
    apt-get update
fi
echo "setup: apt-get install -y ${missing[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
ffmpeg -version | head -n1
