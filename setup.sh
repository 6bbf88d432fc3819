#!/usr/bin/env bash
# Set up the course in ./.venv and open it in JupyterLab.
#   bash setup.sh              set up (or update) and open JupyterLab on notebooks/
#   bash setup.sh --no-open    set up only (CI uses this)
# TORCH_SPEC chooses the PyTorch build, e.g. for a CPU-only build on Linux:
#   TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu" bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "setup.sh: the course needs Python >= 3.10; set PYTHON=/path/to/python3.x" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# PyTorch first, so that the course's `torch>=2.4` is already satisfied by the build you chose.
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet $TORCH_SPEC
# The course and its instructor tools: JupyterLab, the tests, `mi-course build` and `grade`.
.venv/bin/python -m pip install --quiet -e ".[instructor]"
.venv/bin/python -m pip check
.venv/bin/python -m mi_course build --check
echo "setup.sh: the course is installed in .venv"
if [ "${1:-}" != "--no-open" ]; then
  exec .venv/bin/jupyter lab notebooks/
fi
