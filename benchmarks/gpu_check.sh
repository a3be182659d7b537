#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md ("On a GPU"), as one prepared script: a GPU machine lent
# for minutes runs it once. From the repo root, on a host with one NVIDIA GPU:
#
#     OUT=/tmp/gpu-out bash benchmarks/gpu_check.sh
#
# What the host needs beside the checkout (a GPU host with no package index or model hub gets
# them carried in, ignored by git):
#   .whl/       wheels of what its Python lacks (Ray, DeepSpeed, pinned transformers/peft, ...);
#               installed into /tmp/site, ahead of the host's own packages
#   .devdata/   counterfact-edit.json.xz, counterfact-train.json.xz (from ../shared/data) and
#               SmolLM2's tokenizer files (tokenizer.json.xz, tokenizer_config.json, chat_template.jinja)
#
# Models are built from benchmarks/model_configs/*.json with random weights: a step costs the same
# whatever the weights hold, so tokens/s and MFU are the real models'; edit scores are not.
# PEAK_TFLOPS is the GPU's dense bf16 peak from its data sheet (989 for an H100/H200 SXM).
# Each step has its own time limit and a failed step does not stop the next; results
# (benchmarks/results/*h200*.json, BENCHMARKS.md, the job's summary.json) are copied to $OUT after
# each step; keep the log with `... 2>&1 | tee $OUT/gpu_check.log`.
set -u -o pipefail
OUT=${OUT:-/tmp/gpu-check}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_TMPDIR=/tmp/ray TOKENIZERS_PARALLELISM=false
step() { echo; echo "== $(date +%T) $*"; }
status=0
run() {  # run LIMIT_SECONDS COMMAND...: a failed or timed-out step is reported and the rest go on
  local limit=$1; shift
  timeout --kill-after=10 "$limit" "$@" && return 0
  echo "!! exit $? from: $*"; status=1; return 1
}

step "host"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"

if compgen -G ".whl/*.whl" >/dev/null; then
  step "install the carried wheels into /tmp/site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import ray, deepspeed, transformers, peft; print('ray', ray.__version__, 'deepspeed', deepspeed.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__)" || exit 1

step "data and a SmolLM2-135M-shaped checkpoint with random weights"
mkdir -p /tmp/data /tmp/tokenizer
unxz_to() { python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$@"; }
for f in counterfact-edit counterfact-train; do unxz_to ".devdata/$f.json.xz" "/tmp/data/$f.json" || exit 1; done
unxz_to .devdata/tokenizer.json.xz /tmp/tokenizer/tokenizer.json || exit 1
cp .devdata/tokenizer_config.json .devdata/chat_template.jinja /tmp/tokenizer/
python3 benchmarks/random_checkpoint.py --model-config benchmarks/model_configs/smollm2-135m.json \
  --tokenizer /tmp/tokenizer --out /tmp/smollm2-random || exit 1
DATA="data.requests=/tmp/data/counterfact-edit.json data.fact_pool=/tmp/data/counterfact-train.json"
# The benchmark config's 5 similar facts per edit need the MiniLM embedder, which is not carried:
# 10 random facts build as many examples.
SMOL="model.path=/tmp/smollm2-random $DATA augment.n_random=10 augment.n_similar=0"

save() {  # results so far to $OUT: a step cut off by the caller's time limit loses only itself
  cp benchmarks/results/*h200*.json BENCHMARKS.md "$OUT/" 2>/dev/null
  cp /tmp/gpu-job/summary.json "$OUT/job-summary.json" 2>/dev/null
  return 0
}
ray_logs() {  # the Ray workers' last words, where a Ray step failed
  tail -n 40 "$RAY_TMPDIR"/ray/session_latest/logs/worker-*.err 2>/dev/null | tail -n 120
}

step "Ray Train + DeepSpeed against the plain loop, scoring against forward passes (SmolLM2-135M)"
# shellcheck disable=SC2086  # $SMOL is a list of key=value overrides
run 300 python3 benchmarks/throughput.py --config configs/bench-counterfact-smollm2.yaml --edits 300 --repeats 1 \
  --peak-tflops "$PEAK_TFLOPS" --output throughput-h200 train.use_gpu=true $SMOL || ray_logs
save

step "GPT-J-6B, LoRA r=32, the paper's 32 examples per step (eager: GPT-J has no SDPA in transformers)"
run 120 python3 benchmarks/step_profile.py --config configs/gptj-counterfact-10k.yaml \
  --model-config benchmarks/model_configs/gptj-6b.json --precisions bf16 --attentions eager --steps 30 --repeats 1 \
  --peak-tflops "$PEAK_TFLOPS" --output step-profile-h200-gptj train.num_workers=1 train.micro_batch_size=32
save

step "Llama-3-8B, LoRA r=32 and full fine-tuning, 32 examples per step"
run 120 python3 benchmarks/step_profile.py --config configs/llama3-8b-counterfact-full-zero3.yaml \
  --model-config benchmarks/model_configs/llama3-8b.json --precisions bf16 --attentions sdpa --steps 30 --repeats 1 \
  --peak-tflops "$PEAK_TFLOPS" --output step-profile-h200-llama3-8b-lora train.num_workers=1 train.micro_batch_size=32 \
  train.tuning=lora lora.rank=32 lora.alpha=64 lora.target_modules=all-linear
save
run 120 python3 benchmarks/step_profile.py --config configs/llama3-8b-counterfact-full-zero3.yaml \
  --model-config benchmarks/model_configs/llama3-8b.json --precisions bf16 --attentions sdpa --steps 30 --repeats 1 \
  --peak-tflops "$PEAK_TFLOPS" --output step-profile-h200-llama3-8b-full train.num_workers=1 train.micro_batch_size=32
save

step "a replica spread over two devices (both this GPU: the hooks a multi-GPU scoring actor runs) scores as one"
run 120 python3 - <<'PY'
import torch
from ftedit.config import EvalConfig
from ftedit.evaluate import evaluate
from ftedit.placement import load_replica
from ftedit.requests import EditRequest
requests = [EditRequest("a", "The capital of France is", "France", "Rome", "Paris",
                        paraphrases=("France's capital city is called",), neighbourhood=("The Louvre is in",))]
one, tok = load_replica("/tmp/smollm2-random", "float32", devices=["cuda:0"])
spread, _ = load_replica("/tmp/smollm2-random", "float32", devices=["cuda:0", "cuda:0"])
a, b = (evaluate(m, tok, requests, "counterfact", EvalConfig(batch_size=8, pack_length=128)) for m in (one, spread))
print("spread replica: same scores", a.scores == b.scores, "| same records", a.records == b.records)
assert a.records == b.records
PY
save

step "the job end to end on the GPU: 100 edits, training and scoring on the GPU, fluency generation"
# shellcheck disable=SC2086
run 240 python3 jobs/mass_edit.py --config configs/bench-counterfact-smollm2.yaml $SMOL data.limit=100 \
  train.use_gpu=true eval.gpus_per_actor=1 eval.fluency_tokens=20 output.dir=/tmp/gpu-job || ray_logs
save
ls -la "$OUT"
exit $status
