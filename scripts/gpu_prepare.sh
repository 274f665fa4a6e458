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
# pure-Python wheels the accelerator machine lacks: pytest for the gpu-marked tests, fla-core for
# its Triton chunk kernel (the bench-attention reference and kernel = "fla"); --no-deps: torch,
# triton and einops are already there
.venv/bin/python -m pip download -q --no-deps -d .gpu-wheels \
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 fla-core==0.6.0 \
  || echo "[gpu_prepare] could not fetch pytest / fla-core wheels: the session runs without them" >&2
rm -rf .gpu-data && mkdir -p .gpu-data
cp -r "$DATA/mnist" "$DATA/tinyshakespeare" .gpu-data/
du -sh .gpu-wheels .gpu-data
