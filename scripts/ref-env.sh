#!/usr/bin/env bash
# Creates (once) the Python environment that produces reference values: transformers,
# tokenizers, gguf-py, torch (CPU work only), from PyPI, in $TAPER_CACHE/venv.
# Prints the python path. Only `make test-ref` and bench/ need it; `make test` does not.
set -euo pipefail
CACHE="${TAPER_CACHE:-$HOME/.cache/taper}"
VENV="$CACHE/venv"
REQ="$(cd "$(dirname "$0")/.." && pwd)/tests/ref/requirements.txt"
stamp="$VENV/.req-$(sha256sum "$REQ" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "ref-env: creating $VENV from $REQ (first time: a few minutes)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" >&2
  touch "$stamp"
fi
echo "$VENV/bin/python"
