#!/usr/bin/env bash
# Rebuilds the exact tested set for one Python: a fresh venv, the project with the extras that
# Python's CI leg installs, resolved to the newest releases, then frozen.
#   bash requirements/lock.sh "$(pyenv root)/versions/3.13.0/bin/python3"
#   bash requirements/lock.sh python3      # 3.11: the floor stack + the HF test extra (torch CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: lock.sh PYTHON}
VERSION=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
VENV=$(mktemp -d)/venv
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
if [ "$VERSION" = "3.11" ]; then
  # torch's CPU build lies on this machine's disk for 3.11 only; elsewhere pip takes a CUDA build
  "$VENV/bin/pip" install --quiet torch==2.13.0
  EXTRAS="test,hf-test,docs"
else
  EXTRAS="test,docs"
fi
"$VENV/bin/pip" install --quiet -e ".[$EXTRAS]"
{
  echo "# Exact tested set for Python $VERSION (extras: $EXTRAS), made by requirements/lock.sh on $(date -u +%F)."
  echo "# Use as constraints: pip install -c requirements/lock-py$VERSION.txt -e '.[$EXTRAS]'"
  "$VENV/bin/pip" freeze --exclude-editable | grep -v '^treadle'
} > "requirements/lock-py$VERSION.txt"
rm -rf "$(dirname "$VENV")"
echo "wrote requirements/lock-py$VERSION.txt"
