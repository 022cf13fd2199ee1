#!/usr/bin/env bash
# Set up (or reuse) the environment for benchmarks/forecast_peers.py (mtp against neuralforecast), then run
# a command in it.
#   bash scripts/forecast_peer_env.sh python benchmarks/forecast_peers.py    build if needed + run the benchmark
#   bash scripts/forecast_peer_env.sh                                         build if needed + print the versions
# neuralforecast pulls in ray, optuna, pytorch-lightning and coreforecast, none of which mtp's main environment
# needs, so this is a venv of its own under ~/.cache/mtp/forecast-peer-<hash of the package specs below>. mtp is
# installed into it (editable, no deps) so that ours and the peer run in the same interpreter with the same
# torch build. The registry torch is a CUDA build (several GB); it runs on the CPU only here
# (CUDA_VISIBLE_DEVICES is emptied). MTP_FORECAST_PEER_VENV overrides the location.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# neuralforecast 3.3.0 wants torch>=2.9.1; 2.11.0 is the torch of mtp's main environment (scripts/env.sh),
# so our figures here are taken with the same torch as everywhere else (and under the machine's torch<=2.14.1 cap).
TORCH_SPEC="torch==2.11.0"
NEURALFORECAST_SPEC="neuralforecast==3.3.0"
# mtp's engine imports `lightning`, neuralforecast imports `pytorch_lightning`: the same release of both.
LIGHTNING_SPEC="lightning==2.6.6 pytorch-lightning==2.6.6"
LIGHT_DEPS="numpy pyyaml click safetensors tqdm pandas matplotlib psutil"
# pyproject.toml's SPDX licence string needs setuptools>=77, and the reuse path below installs mtp without
# build isolation, i.e. with the venv's own setuptools (a fresh venv's is older).
BUILD_SPEC="setuptools>=77,<82 wheel"
NEEDED_GB=14                            # torch + its CUDA libraries + ray unpacked, with room for pip's cache

key="$(echo "$TORCH_SPEC $NEURALFORECAST_SPEC $LIGHTNING_SPEC $LIGHT_DEPS $BUILD_SPEC" | sha256sum | cut -c1-16)"
venv="${MTP_FORECAST_PEER_VENV:-$HOME/.cache/mtp/forecast-peer-$key}"
if [ ! -f "$venv/.complete" ]; then
  parent="$(dirname "$venv")"
  mkdir -p "$parent"
  free_gb="$(df -P -BG "$parent" | awk 'NR == 2 {sub("G", "", $4); print $4}')"
  df -h "$parent" >&2
  if [ "$free_gb" -lt "$NEEDED_GB" ]; then
    echo "[forecast-peer-env] $parent has ${free_gb} GB free; the environment needs about $NEEDED_GB GB" >&2
    exit 1
  fi
  echo "[forecast-peer-env] building $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip $BUILD_SPEC
  # One resolve, everything pinned that matters, so neuralforecast cannot pull in another torch or lightning.
  "$venv/bin/python" -m pip install -q "$TORCH_SPEC" "$NEURALFORECAST_SPEC" $LIGHTNING_SPEC $LIGHT_DEPS
  "$venv/bin/python" -m pip install -q --no-deps -e "$root"
  touch "$venv/.complete"
else
  # The editable install must point at this clone, wherever it is (pip's output only when it fails).
  if ! log="$("$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root" 2>&1)"; then
    echo "$log" >&2
    exit 1
  fi
fi
export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv" CUDA_VISIBLE_DEVICES=""
export MTP_DATA_DIR="${MTP_DATA_DIR:-$(cd "$root/.." && pwd)/shared/data}"
export MTP_WEIGHTS_DIR="${MTP_WEIGHTS_DIR:-$(cd "$root/.." && pwd)/shared/weights}"

if [ $# -eq 0 ]; then
  exec python -c "import torch, lightning, neuralforecast, mtp; print('torch', torch.__version__, '| lightning', \
lightning.__version__, '| neuralforecast', neuralforecast.__version__, '| mtp from', mtp.__path__[0])"
fi
exec "$@"
