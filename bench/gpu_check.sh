#!/usr/bin/env bash
# The prepared GPU check of issue #12: one device call, <= 8 minutes on one H100/H200, results under $OUT.
#
# Here first:   bash bench/gpu_wheels.sh            (wheels the GPU image lacks, into .whl/)
# Device call:  run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Afterwards:   copy the '### 7B size' (and '### GPU size') subsections from the returned BENCHMARKS.md into the
#               repository's, and the parity / logits lines into docs where they are quoted.
#
# Steps, each with its own time limit so that the whole stays under 8 minutes (480 s):
#   1. bench/gpu_parity.py       packed vs plain rows on CUDA, fp32: SDPA, FlexAttention (gradients), compile  ~60 s
#   2. bench/logits_memory.py    peak GPU memory: full vs chunked lm_head + log-softmax (bf16 head)            ~15 s
#   3. train_throughput --size 7b   K = 1 and 3: bpo, TRL DPOTrainer, bpo + ref cache (1 repeat each)        ~300 s
#   4. train_throughput --size gpu  K = 1: bpo vs bpo plain rows (the 'no slower than plain rows' target)    rest
set -uo pipefail
OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  echo "no .whl/: using the image's transformers/peft (TRL is missing there; step 3 will fail without it)"
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 BPO_HOME=/tmp/bpo_home TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
start=$(date +%s)
left() { echo $(( 470 - ($(date +%s) - start) )); }
python3 - <<'PY' 2>&1 | tee "$OUT/versions.txt"
import torch, transformers, peft, accelerate
try:
    import trl; t = trl.__version__
except Exception as e:
    t = f"missing ({e})"
print("torch", torch.__version__, "| transformers", transformers.__version__, "| peft", peft.__version__,
      "| accelerate", accelerate.__version__, "| trl", t, "|", torch.cuda.get_device_name(0))
PY
echo "== 1. parity" | tee "$OUT/parity.txt"
timeout 120 python3 bench/gpu_parity.py 2>&1 | grep -v "Loading weights\|Writing model" | tee -a "$OUT/parity.txt"
echo "== 2. lm_head memory" | tee "$OUT/logits.txt"
timeout 60 python3 bench/logits_memory.py --device cuda --dtype bfloat16 2>&1 | tee -a "$OUT/logits.txt"
echo "== 3. 7b ($(left) s left)" | tee "$OUT/bench_7b.txt"
timeout $(( $(left) - 45 )) python3 bench/train_throughput.py --size 7b --variants bpo "TRL DPOTrainer" \
  "bpo + ref cache" --write 2>&1 | grep -v "Loading weights\|Writing model" | tee -a "$OUT/bench_7b.txt"
if [ "$(left)" -gt 100 ]; then
  echo "== 4. gpu size, K=1 ($(left) s left)" | tee "$OUT/bench_gpu.txt"
  timeout $(( $(left) - 5 )) python3 bench/train_throughput.py --size gpu --k 1 --repeats 1 --no-check \
    --set records=32 steps=6 --variants bpo "bpo plain rows" --write 2>&1 \
    | grep -v "Loading weights\|Writing model" | tee -a "$OUT/bench_gpu.txt"
else
  echo "== 4. skipped: $(left) s left" | tee "$OUT/bench_gpu.txt"
fi
cp BENCHMARKS.md "$OUT/" 2>/dev/null
echo "gpu_check: $(( $(date +%s) - start )) s"
