#!/usr/bin/env bash
# Create the project's Python 3.10 virtual environment (lava-nc 0.10 needs 3.10).
set -euo pipefail
venv=${1:-.venv}
find_python310() {
  if command -v python3.10 >/dev/null 2>&1 && python3.10 -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
    command -v python3.10; return 0
  fi
  for p in "$HOME"/.pyenv/versions/3.10.*/bin/python3.10 /usr/local/bin/python3.10 /usr/bin/python3.10; do
    [ -x "$p" ] && { echo "$p"; return 0; }
  done
  return 1
}
if ! py=$(find_python310); then
  cat >&2 <<'MSG'
error: Python 3.10 was not found (lava-nc 0.10 and lava-dl 0.6 require Python >=3.10,<3.11).
Install it, for example one of:
  pyenv install 3.10           # then re-run make
  apt-get install python3.10 python3.10-venv
and make sure `python3.10` is on PATH or under ~/.pyenv/versions/3.10.*.
MSG
  exit 1
fi
echo "Using $py"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -c constraints.txt -e '.[dev,onnx]'
