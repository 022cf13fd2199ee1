#!/usr/bin/env bash
# Set up (or reuse) the peer environment of benchmarks/tsc_bench.py: aeon with its deep-learning backend
# (TensorFlow + Keras, CPU), in which aeon's InceptionTimeClassifier (Keras) is timed. Then run a command in it.
#   bash scripts/tsc_peer_env.sh                 build if needed + print the versions
#   bash scripts/tsc_peer_env.sh --python        build if needed + print the path of its python (tsc_bench.py
#                                                calls this to find the interpreter of its peer child)
#   bash scripts/tsc_peer_env.sh CMD [ARGS...]   build if needed + run a command in it
# mtp's main environment has aeon (MiniRocket) but no TensorFlow; TensorFlow is large and only this benchmark
# needs it, so it lives in a venv of its own under ~/.cache/mtp/tsc-peer-<hash of the package specs below>
# (MTP_TSC_PEER_VENV overrides the location). The benchmark itself runs in mtp's main environment and starts
# only the Keras child in this one; mtp is installed here too (editable, no deps) as in the other bench venvs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# aeon[dl] asks for tensorflow>=2.14 and keras>=3.6; for Python 3.11 pip resolves tensorflow 2.21.0 (the newest,
# checked 2026-11-30 with `pip index versions`). tensorflow-cpu is the same release without the GPU kernels
# (274 MB wheel, about 1.3 GB unpacked); aeon only imports `tensorflow`, which it provides. keras 3.15.1 is what
# pip resolves for it. numpy, numba, scikit-learn and scipy are pinned to mtp's main environment (scripts/env.sh),
# so aeon runs on the same numerical stack on both sides of the benchmark.
AEON_SPEC="aeon==1.6.0"
TF_SPEC="tensorflow-cpu==2.21.0 keras==3.15.1"
STACK_SPEC="numpy==2.3.5 numba==0.63.1 scikit-learn==1.9.1 scipy==1.17.1"
LIGHT_DEPS="pyyaml psutil"
NEEDED_GB=5                             # TensorFlow unpacked (1.3 GB) + the rest, with room for pip's cache

key="$(echo "$AEON_SPEC $TF_SPEC $STACK_SPEC $LIGHT_DEPS setuptools>=77,<82 wheel" | sha256sum | cut -c1-16)"
venv="${MTP_TSC_PEER_VENV:-$HOME/.cache/mtp/tsc-peer-$key}"
label="tsc-peer-env"
source "$root/scripts/bench_venv.sh"
build_bench_venv "$AEON_SPEC" $TF_SPEC $STACK_SPEC $LIGHT_DEPS
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"   # TensorFlow's C++ start-up notices off

if [ $# -eq 0 ]; then
  exec python -c "import aeon, keras, numpy, numba, tensorflow as tf; print('aeon', aeon.__version__, '| tensorflow', \
tf.__version__, '| keras', keras.__version__, '| numpy', numpy.__version__, '| numba', numba.__version__)"
fi
if [ "$1" = "--python" ]; then
  echo "$venv/bin/python"
  exit 0
fi
exec "$@"
