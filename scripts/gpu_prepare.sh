#!/usr/bin/env bash
# Stage what ONE device run needs, in folders git ignores (they travel with `carry`):
#   .gpu-wheels/  spaCy's Python 3.12 wheels (../shared/gpu/prepare.sh), plus pytest and fla-core
#   .gpu-data/    the MNIST and tinyshakespeare files the GPU steps read (12 MB)
# Then, with the device tool:  run(command="bash scripts/gpu_session.sh", carry=[".gpu-wheels", ".gpu-data"],
# timeout_s=570)  and give_back afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${KX_DATA:-../shared/data}
../shared/gpu/prepare.sh
# the session runs no spacy-transformers pipeline (kx_spacy's CLI never imports transformers), and the
# carry limit is 64 MiB (checkout ~21 MB): leave out transformers, tokenizers and the hub client
rm -f .gpu-wheels/transformers-*.whl .gpu-wheels/tokenizers-*.whl .gpu-wheels/huggingface_hub-*.whl
# pure-Python wheels the accelerator machine lacks: pytest and hypothesis for the gpu-marked tests, fla-core for
# its Triton chunk kernel (the bench-attention reference and kernel = "fla"); --no-deps: torch,
# triton and einops are already there
.venv/bin/python -m pip download -q --no-deps -d .gpu-wheels \
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 hypothesis==6.170.27 sortedcontainers==2.4.0 \
  fla-core==0.6.0 \
  || echo "[gpu_prepare] could not fetch pytest / fla-core wheels: the session runs without them" >&2
rm -rf .gpu-data && mkdir -p .gpu-data
cp -r "$DATA/mnist" "$DATA/tinyshakespeare" .gpu-data/
du -sh .gpu-wheels .gpu-data
echo "carry total (checkout + staged), must stay under 64 MiB:"
{ git ls-files -z | xargs -0 du -cb | tail -1; du -sb .gpu-wheels .gpu-data; } | awk '{s += $1} END {printf "%.1f MiB\n", s / 1048576}'
