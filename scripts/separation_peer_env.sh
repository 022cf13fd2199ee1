#!/usr/bin/env bash
# Set up (or reuse) the peer environment of benchmarks/separation_bench.py: ClearerVoice-Studio's `clearvoice`
# package from PyPI, in which ClearerVoice's own MossFormer2_SS_16K network and decoder are timed. Then run a
# command in it.
#   bash scripts/separation_peer_env.sh                 build if needed + print the versions
#   bash scripts/separation_peer_env.sh --python        build if needed + print the path of its python
#                                                       (separation_bench.py calls this to find its peer child's
#                                                       interpreter)
#   bash scripts/separation_peer_env.sh CMD [ARGS...]   build if needed + run a command in it
# clearvoice 0.1.2 pins numpy<2.0, librosa 0.10.2.post1, soundfile 0.12.1, opencv-python 4.10.0.84 and
# rotary_embedding_torch 0.8.3 (and asks for torchvision), none of which fit mtp's main environment (numpy 2.3),
# so it lives in a venv of its own under ~/.cache/mtp/separation-peer-<hash of the package specs below>
# (MTP_SEPARATION_PEER_VENV overrides the location). The benchmark runs in mtp's main environment and starts
# only the ClearerVoice children in this one; mtp is installed here too (editable, no deps) as in the other
# bench venvs. CPU only (CUDA_VISIBLE_DEVICES is emptied).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# clearvoice 0.1.2 is the newest release (0.1.1, 0.1.2 on the registry; checked 2026-11-30 with
# `pip index versions clearvoice`). It asks for torch>=2.0.1, torchaudio>=2.0.2 and an unpinned torchvision, so
# torch and torchaudio are pinned to mtp's main environment (scripts/env.sh: the registry's 2.11.0, a CUDA build
# run on the CPU) and torchvision to 0.26.0, the release built against torch 2.11: both sides of the benchmark
# run on the same torch build. numpy 1.26.4 is the newest release under clearvoice's numpy<2.0 pin (torch 2.11's
# wheels run on numpy 1.x). clearvoice's own pins (librosa, soundfile, opencv-python, rotary_embedding_torch,
# python_speech_features, scenedetect) come with it as it states them.
CLEARVOICE_SPEC="clearvoice==0.1.2"
TORCH_SPEC="torch==2.11.0 torchaudio==2.11.0 torchvision==0.26.0"
STACK_SPEC="numpy==1.26.4"
LIGHT_DEPS="pyyaml psutil safetensors"
NEEDED_GB=12                            # torch + its CUDA libraries unpacked, with room for pip's cache

key="$(echo "$CLEARVOICE_SPEC $TORCH_SPEC $STACK_SPEC $LIGHT_DEPS setuptools>=77,<82 wheel" | sha256sum | cut -c1-16)"
venv="${MTP_SEPARATION_PEER_VENV:-$HOME/.cache/mtp/separation-peer-$key}"
label="separation-peer-env"
source "$root/scripts/bench_venv.sh"
# One resolve, everything that matters pinned, so clearvoice cannot pull in another torch or numpy.
build_bench_venv "$CLEARVOICE_SPEC" $TORCH_SPEC $STACK_SPEC $LIGHT_DEPS

if [ $# -eq 0 ]; then
  exec python -c "import importlib.metadata as md, torch, numpy, clearvoice; \
from clearvoice.models.mossformer2_ss.mossformer2 import MossFormer2_SS_16K; \
print('clearvoice', md.version('clearvoice'), '| torch', torch.__version__, '| numpy', numpy.__version__, \
'| librosa', md.version('librosa'), '| rotary-embedding-torch', md.version('rotary-embedding-torch'))"
fi
if [ "$1" = "--python" ]; then
  echo "$venv/bin/python"
  exit 0
fi
exec "$@"
