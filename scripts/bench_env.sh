#!/usr/bin/env bash
# Set up (or reuse) the comparison environment for benchmarks/sr_bench.py, then run a command in it.
#   bash scripts/bench_env.sh python benchmarks/sr_bench.py     build if needed + run the SR benchmark
#   bash scripts/bench_env.sh                                    build if needed + print the versions
# spandrel needs torchvision, and the registry's torchvision needs the registry's matching torch (a CUDA
# build, several GB), not the local CPU wheel of mtp's main environment; so this is a venv of its own under
# ~/.cache/mtp/bench-<hash of the package specs below>. It runs on the CPU only (CUDA_VISIBLE_DEVICES is
# emptied). MTP_BENCH_VENV overrides the location.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

TORCH_SPEC="torch==2.14.1"              # torchvision 0.29 is built against torch 2.14
TORCHVISION_SPEC="torchvision==0.29.1"
SPANDREL_SPEC="spandrel==0.4.2"
LIGHT_DEPS="numpy pyyaml click safetensors tqdm opencv-python-headless psutil"
NEEDED_GB=12                            # torch + its CUDA libraries unpacked, with room for pip's cache

key="$(echo "$TORCH_SPEC $TORCHVISION_SPEC $SPANDREL_SPEC $LIGHT_DEPS" | sha256sum | cut -c1-16)"
venv="${MTP_BENCH_VENV:-$HOME/.cache/mtp/bench-$key}"
label="bench-env"
source "$root/scripts/bench_venv.sh"
# All three in one resolve, pinned, so pip cannot pick the local CPU torch wheel for torchvision.
build_bench_venv "$TORCH_SPEC" "$TORCHVISION_SPEC" "$SPANDREL_SPEC" $LIGHT_DEPS

if [ $# -eq 0 ]; then
  exec python -c "import torch, torchvision, spandrel, mtp; print('torch', torch.__version__, '| torchvision', \
torchvision.__version__, '| spandrel', spandrel.__version__, '| mtp from', mtp.__path__[0])"
fi
exec "$@"
