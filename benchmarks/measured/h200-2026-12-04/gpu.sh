#!/bin/bash
# One prepared device check: CUDA training test, storyworld throughput, real shapes on CUDA.
# usage on the device: bash .whl/gpu.sh   (DEV=cpu TINY=--tiny for a local smoke)
DEV=${DEV:-cuda}; OUT=${OUT:-/tmp/gpuout}; PY=${PY:-python3}; mkdir -p $OUT
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s); t() { echo "[$(( $(date +%s) - start ))s] $*"; }
if [ "$DEV" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/lib:$PWD
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/gpu.txt
else
  export PYTHONPATH=$PWD/lib:$PWD
fi
$PY -c "import torch, nnsight, transformers, saelab; print('torch', torch.__version__, 'nnsight', nnsight.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" | tee -a $OUT/gpu.txt
t pytest
timeout ${T1:-60} $PY -m pytest -q -p no:cacheprovider tests/test_distributed.py -k cuda_training 2>&1 | tail -5 | tee $OUT/pytest.txt
t throughput
timeout ${T2:-90} $PY benchmarks/throughput.py --device $DEV ${TSTEPS} --out $OUT/throughput.json 2>&1 | tail -25
for m in llama gpt2 gemma; do
  t real_shapes $m
  timeout $([ $m = llama ] && echo ${T3:-180} || echo ${T3:-90}) $PY benchmarks/real_shapes.py --device $DEV --models $m --batch-size 8 --n-ctx 1024 --llama-layers 16 $TINY --out $OUT/real_$m.json 2>&1 | tail -8
done
t real_shapes llama stream never
timeout ${T4:-60} $PY benchmarks/real_shapes.py --device $DEV --models llama --batch-size 8 --n-ctx 1024 --llama-layers 16 --stream never --kl-chunk 0 --steps-to-run forward+backward,relu:e2e $TINY --out $OUT/real_llama_never.json 2>&1 | tail -4
t done
