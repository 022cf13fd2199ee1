#!/usr/bin/env bash
# Set up (or reuse) mtp's virtual environment, then run a command in it.
#   bash scripts/env.sh test            install + run the test suite
#   bash scripts/env.sh main            install + train and evaluate recipes/ett_itransformer.yaml
#   bash scripts/env.sh CMD [ARGS...]   install + run any command (e.g. mtp list tasks)
# The environment lives outside the clone, under ~/.cache/mtp/, keyed by a hash of the dependency spec
# (pyproject.toml and this file), so a fresh clone reuses it and a changed spec rebuilds it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

EXTRAS="vision,timeseries,kernels,train,bench,test"
TORCH_SPEC="torch==2.13.0"   # a CPU wheel of this version is used when pip finds one locally

key="$(cat pyproject.toml scripts/env.sh | sha256sum | cut -c1-16)"
venv="${MTP_VENV:-$HOME/.cache/mtp/venv-$key}"
if [ ! -f "$venv/.complete" ]; then
  echo "[env] building $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "$TORCH_SPEC"
  # Keep the torch just installed: the extras' torch requirements are ranges it satisfies.
  "$venv/bin/python" -m pip install -q -e ".[$EXTRAS]" "$TORCH_SPEC"
  touch "$venv/.complete"
else
  # The editable install must point at this clone, wherever it is.
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
fi
export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
# Real data and official weights sit in ../shared beside the clone (see README, "Data and weights").
export MTP_DATA_DIR="${MTP_DATA_DIR:-$(cd "$root/.." && pwd)/shared/data}"
export MTP_WEIGHTS_DIR="${MTP_WEIGHTS_DIR:-$(cd "$root/.." && pwd)/shared/weights}"

case "${1:-test}" in
  test) shift || true; exec python -m pytest -q "$@" ;;
  main) shift; exec mtp run recipes/ett_itransformer.yaml --overwrite "$@" ;;
  *) exec "$@" ;;
esac
