#!/usr/bin/env bash
# Set up (or reuse) the peer environment of benchmarks/asr_bench.py: NVIDIA NeMo (`nemo-toolkit` from PyPI with
# its `asr` extra), in which NeMo's own EncDecCTCModelBPE with its SqueezeformerEncoder, mel preprocessor and
# ConvASRDecoder is timed. Then run a command in it.
#   bash scripts/asr_peer_env.sh                 build if needed + print the versions
#   bash scripts/asr_peer_env.sh --python        build if needed + print the path of its python
#                                                (asr_bench.py calls this to find its NeMo child's interpreter)
#   bash scripts/asr_peer_env.sh CMD [ARGS...]   build if needed + run a command in it
# NeMo's asr extra brings lightning, hydra/omegaconf, transformers, lhotse, wandb and more, none of which mtp's
# main environment needs, so it lives in a venv of its own under ~/.cache/mtp/asr-peer-<hash of the package
# specs below> (MTP_ASR_PEER_VENV overrides the location). The benchmark runs in mtp's main environment and starts
# only the NeMo children in this one; mtp is installed here too (editable, no deps) as in the other bench venvs.
# CPU only (CUDA_VISIBLE_DEVICES is emptied).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# nemo-toolkit 2.7.3 is the newest 2.x release (checked 2026-11-30 with `pip index versions nemo-toolkit`: 3.0.0,
# 2.7.3, ...). It is after 2.5, whose front end (zero-padded centred STFT, floor(N/hop) frames) and masked
# subsampling are what mtp's Squeezeformer follows (../shared/fixtures/squeezeformer/README.md: reference commit
# after v2.5.0rc0); 2.7.3 still ships nemo/collections/asr/modules/squeezeformer_encoder.py. It asks for
# torch>=2.6.0 only, so torch and torchaudio are pinned to mtp's main environment (scripts/env.sh: the registry's
# 2.11.0, a CUDA build run on the CPU): both sides of the benchmark run on the same torch build. The `asr` extra
# is installed as NeMo states it (lightning<=2.4.0, omegaconf<=2.3, hydra-core, transformers~=4.57, lhotse,
# librosa, sentencepiece<1.0 ...): `import nemo.collections.asr` imports most of it at module level. numpy is
# left to the resolver (NeMo 2.7.3 bounds it only in its nlp extra; it resolved to 2.4.6 on 2026-11-30, the main
# environment has 2.3.5): the benchmark's arrays cross between the sides as .npz files and the compute is torch's.
# Built here on 2026-11-30: about 6.2 GB on disk (torch, its CUDA libraries and triton 4.5 GB of it), pip's build
# ~3 minutes.
NEMO_SPEC="nemo-toolkit[asr]==2.7.3"
TORCH_SPEC="torch==2.11.0 torchaudio==2.11.0"
LIGHT_DEPS="pyyaml psutil safetensors"
NEEDED_GB=12                            # torch + its CUDA libraries unpacked, with room for pip's cache

key="$(echo "$NEMO_SPEC $TORCH_SPEC $LIGHT_DEPS setuptools>=77,<82 wheel" | sha256sum | cut -c1-16)"
venv="${MTP_ASR_PEER_VENV:-$HOME/.cache/mtp/asr-peer-$key}"
label="asr-peer-env"
source "$root/scripts/bench_venv.sh"
# One resolve, everything that matters pinned, so NeMo's dependencies cannot pull in another torch.
build_bench_venv "$NEMO_SPEC" $TORCH_SPEC $LIGHT_DEPS

if [ $# -eq 0 ]; then
  # Not from the repository root: its `datasets/` folder (mtp's own) would shadow Hugging Face's `datasets`,
  # which NeMo imports.
  cd "$venv"
  exec python -c "import importlib.metadata as md, torch, numpy; \
from nemo.collections.asr.models import EncDecCTCModelBPE, EncDecCTCModel; \
from nemo.collections.asr.modules import SqueezeformerEncoder; \
print('nemo-toolkit', md.version('nemo-toolkit'), '| torch', torch.__version__, '| numpy', numpy.__version__, \
'| lightning', md.version('lightning'), '| omegaconf', md.version('omegaconf'))"
fi
if [ "$1" = "--python" ]; then
  echo "$venv/bin/python"
  exit 0
fi
exec "$@"
