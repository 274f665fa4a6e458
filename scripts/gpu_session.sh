#!/usr/bin/env bash
# The device check of one session (run by the device tool in the repository root; stage it first
# with scripts/gpu_prepare.sh). A session has 15 device-minutes in all, the machine's start
# included, so every step is shortened and has its own timeout (about 8.5 minutes together); each
# step's output lands under $OUT (at most 8 files come back) even when a later step fails.
#   1. the gpu-marked tests (fla kernel vs the reference, precision policy)
#   2. bench-attention on the GPU: T = 512 ... 65,536, bf16, kx causal / non-causal vs SDPA and fla
#   3. NVAE (configs/nvae/gpu.cfg) for KX_NVAE_MINUTES, its MLP baseline for as long, IW bound
#   4. the linear / softmax character LM pair (configs/linear_attention/lm_gpu.cfg), KX_LM_MINUTES each
set -uo pipefail
OUT=${OUT:-/tmp/kx_gpu_out}
mkdir -p "$OUT"
LOG="$OUT/session.log"
python3 -m pip install -q --no-index --no-deps --target /tmp/kx_site .gpu-wheels/*.whl || exit 1
export PYTHONPATH=/tmp/kx_site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DATA=${KX_GPU_DATA:-.gpu-data}
NVAE_MIN=${KX_NVAE_MINUTES:-1.5}
LM_MIN=${KX_LM_MINUTES:-0.75}

step() {  # step NAME SECONDS COMMAND...: run with a timeout, log it, never stop the session
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (timeout ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  echo "== $name rc=$? in $((SECONDS - t0))s" | tee -a "$LOG"
  tail -n 4 "$LOG"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'; } >> "$LOG" 2>&1
step gpu-tests 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/models/test_linear_attention.py tests/training/test_precision.py
step bench-attention 200 python3 -m kx_spacy bench-attention --device cuda --budget 0.3 --output-dir "$OUT" --stem bench_attention_gpu
step nvae 300 python3 -m kx_spacy train-nvae configs/nvae/gpu.cfg /tmp/kx_nvae_gpu --data-dir "$DATA" \
  --metrics "$OUT/nvae_gpu.json" --minutes "$NVAE_MIN" --evaluation.num_images 500 \
  --evaluation.marks_k 100 --evaluation.marks_num_images 500 --evaluation.baseline_num_images 500
for att in linear softmax; do
  step "lm-$att" 110 python3 -m kx_spacy train-linear-attention-lm configs/linear_attention/lm_gpu.cfg \
    "/tmp/kx_lm_gpu_$att" --data-dir "$DATA" --metrics "$OUT/la_lm_gpu_$att.json" \
    --model.attention "$att" --training.max_time_minutes "$LM_MIN"
done
echo "== done in ${SECONDS}s" | tee -a "$LOG"
