#!/usr/bin/env bash
# System tools the audio benchmark needs that pip cannot install: ffmpeg (cutting, filtering and
# encoding clips; ffprobe for durations) and apt-get/dpkg (fetching the corpus). Idempotent.
set -euo pipefail

if command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; then
    echo "setup: ffmpeg present ($(ffmpeg -version | head -n1))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: ffmpeg is missing; install it (apt-get install -y ffmpeg) as root" >&2
    exit 1
fi

# A fresh machine has no package lists; only update when apt cannot see ffmpeg yet.
if ! apt-cache show ffmpeg >/dev/null 2>&1; then
    echo "setup: apt-get update"
    apt-get update
fi
echo "setup: apt-get install -y ffmpeg"
DEBIAN_FRONTEND=noninteractive apt-get install -y ffmpeg
ffmpeg -version | head -n1
