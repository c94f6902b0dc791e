#!/usr/bin/env bash
# Set up a fresh Debian machine (Python 3.11, root): system tools from apt, the project from PyPI.
# `--test` adds what the test suite needs (espeak-ng for speech, Chromium for the browser tests).
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(ffmpeg)
extras=""
if [[ "${1:-}" == "--test" ]]; then
  pkgs+=(espeak-ng chromium sox)
  extras="[test]"
fi
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if (( ${#missing[@]} )); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi
# Debian's own python3 marks itself externally managed (PEP 668); a root setup installs anyway.
export PIP_BREAK_SYSTEM_PACKAGES=1
# torch and torchaudio first, as one pinned pair (pyannote.audio needs them to match exactly).
python3 -m pip install -q --disable-pip-version-check torch==2.9.1 torchaudio==2.9.1
python3 -m pip install -q --disable-pip-version-check -e ".${extras}"
# pyenv keeps console-script shims that need a rehash after installing new scripts.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
python3 - <<'PY'
import os
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
import pyannote.audio, torch, torchaudio  # noqa: E401  the pair must import together
print(f"setup ok: torch {torch.__version__}, torchaudio {torchaudio.__version__}, pyannote.audio {pyannote.audio.__version__}")
PY
