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
NEEDED_GB=14                            # torch + its CUDA libraries + ray unpacked, with room for pip's cache

key="$(echo "$TORCH_SPEC $NEURALFORECAST_SPEC $LIGHTNING_SPEC $LIGHT_DEPS setuptools>=77,<82 wheel" | sha256sum | cut -c1-16)"
venv="${MTP_FORECAST_PEER_VENV:-$HOME/.cache/mtp/forecast-peer-$key}"
label="forecast-peer-env"
source "$root/scripts/bench_venv.sh"
# Everything that matters pinned, so neuralforecast cannot pull in another torch or lightning.
build_bench_venv "$TORCH_SPEC" "$NEURALFORECAST_SPEC" $LIGHTNING_SPEC $LIGHT_DEPS

if [ $# -eq 0 ]; then
  exec python -c "import torch, lightning, neuralforecast, mtp; print('torch', torch.__version__, '| lightning', \
lightning.__version__, '| neuralforecast', neuralforecast.__version__, '| mtp from', mtp.__path__[0])"
fi
exec "$@"
