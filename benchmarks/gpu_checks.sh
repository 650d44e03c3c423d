#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine with PyTorch and no network (the `device` tool's
# H100/H200 machines): every figure below is written to $OUT (default ./gpu-out) under the names
# benchmarks/report.py reads from benchmarks/results/gpu/. The parts' limits sum to 1,020 s, more than one
# 600-second command of the `device` tool: run it there in two calls, each naming its parts (PARTS=a,b).
#
#   1. step_cost: JSA's scoring modes (one_pass, two_pass, auto) against RAG-Sequence, K=10, m=50, B=4,
#      random weights of MiniLM's and SmolLM2-135M's architectures; the random posterior is sharpened
#      (retriever.temperature 0.0008: ~5.4 expected distinct proposals of 50 per question on CPU in fp32, 6.3-7.3
#      measured on an H200 in bf16, with ~4.5 chain states, as trained weights visit) and left at the default 0.1.
#      step_cost_matched_micro4 instead matches the chain of trained weights (~11 proposals, ~4 states) by the
#      temperature and a generator logit scale chosen from a grid (--match-chain).
#   2. index_encoding: passages per second of jsarag's encoder (and sentence-transformers') on the GPU, fp32 and
#      bf16 autocast, for MiniLM's and bge-large's architectures: the rates docs/scale.md turns into GPU-hours;
#      and the host side of jsarag's encode alone (model stubbed out).
#   3. `jsarag train` under torchrun on the GPU, tiny models, whole index and index.sharded=true: the same losses.
#      One process only (NCCL refuses two ranks on one GPU): jsarag makes no process group for one process, so
#      neither NCCL nor the merge across ranks runs here (the run header's `processes`/`backend` say so); it checks
#      training on CUDA through torchrun and the CLI. The merge is tested with 2 gloo processes
#      (tests/test_resume_and_distributed.py); NCCL needs a machine with 2 GPUs.
#
# Needs .whl/ (wheels of the pinned packages the GPU machine lacks) and .gpu/ (config-and-tokenizer model folders,
# the tiny builtins, SQuAD), both ignored by git and made by `.venv/bin/python benchmarks/gpu_prepare.py`; then
# copy the checkout with .whl/ and .gpu/ to the GPU machine and run `bash benchmarks/gpu_checks.sh` there.
# Each part has its own time limit and a failure does not stop the next one; PARTS=a,b runs only those parts.
# `SMOKE=1 DEVICE=cpu PY=.venv/bin/python bash benchmarks/gpu_checks.sh` runs every part at toy sizes on a CPU
# (a check of the script, no figures).
set -u
DEVICE=${DEVICE:-cuda} PY=${PY:-python3}
if [ -n "${SMOKE:-}" ]; then
  SIZES=(--smoke --repeats 1 --batches 1); R16=1
  MINI=(--passages 32 --encode-repeats 1); BGE=(--passages 8 --encode-repeats 1)
else
  SIZES=(--repeats 5 --batches 3); R16=8
  MINI=(--passages 4000 --encode-repeats 2); BGE=(--passages 2000 --encode-repeats 2)
fi
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_checks.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 JSARAG_SHARED_DATA=$PWD/.gpu/data
if [ -z "${SMOKE:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
M=.gpu/models
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c "import torch, transformers, peft, faiss, rouge_score; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'faiss', faiss.__version__, 'cuda', torch.version.cuda)"

part() {  # part NAME SECONDS COMMAND...: one check, timed, its status printed (only those in $PARTS, if set)
  local name=$1 limit=$2; shift 2
  [ -n "${PARTS:-}" ] && [[ ",$PARTS," != *",$name,"* ]] && return
  echo "=== $name (limit ${limit}s) $(date -u +%T)"
  local began=$SECONDS
  timeout "$limit" "$@"
  echo "=== $name: exit $? after $((SECONDS - began)) s"
}

STEP=("$PY" benchmarks/step_cost.py --device "$DEVICE" --no-training --random-weights --retriever $M/minilm
      --generator $M/smollm2 --batch-size 4 "${SIZES[@]}" --variants rag_sequence,jsa_two_pass,jsa_one_pass,jsa)
part step_cost_sharp_micro4 100 "${STEP[@]}" --micro-batch-size 4 --temperature 0.0008 \
  --out "$OUT/step_cost_scoring_gpu_sharp_micro4.json"
# Tokenizers on all the host's cores, as `jsarag index build` runs them (the benchmarks' default is one thread).
ENCODE=(env TOKENIZERS_PARALLELISM=true "$PY" benchmarks/index_encoding.py --skip-index --device "$DEVICE"
        --random-weights)
part encoding_minilm 80 "${ENCODE[@]}" --retriever $M/minilm "${MINI[@]}" --batch-size 512 \
  --out "$OUT/index_encoding_gpu_minilm.json"
part encoding_bge_large 90 "${ENCODE[@]}" --retriever $M/bge-large-arch "${BGE[@]}" --batch-size 256 \
  --out "$OUT/index_encoding_gpu_bge_large.json"

TRAIN=("$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m jsarag train configs/tiny.yaml)
TINY=(train.steps=3 train.save_every=3 data.max_eval_examples=4 retriever.model=$M/tiny-bert
      generator.model=$M/tiny-llama)  # 3 steps of the tiny config, one process
rm -rf /tmp/gpu-train
part train_cuda_whole 60 "${TRAIN[@]}" --out /tmp/gpu-train/whole "${TINY[@]}"
part train_cuda_sharded 60 "${TRAIN[@]}" --out /tmp/gpu-train/sharded "${TINY[@]}" index.sharded=true
[ -z "${PARTS:-}" ] || [[ ",$PARTS," == *",train_cuda_sharded,"* ]] && "$PY" - "$OUT/train_cuda_gpu.json" <<'EOF'
import json, sys
from pathlib import Path
runs = {}
for name in ("whole", "sharded"):
    path = Path("/tmp/gpu-train") / name / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    runs[name] = {"header": next((r["run"] for r in records if "run" in r), None),
                  "losses": {r["step"]: r["loss"] for r in records if "loss" in r},
                  "eval_f1": next((r["eval/f1"] for r in records if "eval/f1" in r), None)}
a, b = runs["whole"]["losses"], runs["sharded"]["losses"]
runs["same_losses_within_1e-5"] = bool(a) and a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 for k in a)
Path(sys.argv[1]).write_text(json.dumps(runs, indent=1))
print("train_cuda:", json.dumps({k: runs[k]["losses"] for k in ("whole", "sharded")}),
      "same:", runs["same_losses_within_1e-5"])
EOF
part step_cost_default_micro4 70 "${STEP[@]}" --micro-batch-size 4 \
  --out "$OUT/step_cost_scoring_gpu_default_micro4.json"
# The chain of SQuAD's trained weights on the CPU: ~11 distinct proposals and ~4 states per question (31-46% kept);
# the runs above kept 65% or more. --match-chain picks temperature and logit scale from a grid (20 points, one
# untimed step per batch each) to come close to it.
part step_cost_matched_micro4 240 "${STEP[@]}" --micro-batch-size 4 --match-chain 11,4 \
  --out "$OUT/step_cost_scoring_gpu_matched_micro4.json"
# Fewer states still (~30% kept), 8 timed rounds.
for mb in 4 1; do
  part step_cost_matched16_micro$mb 120 "${STEP[@]}" --micro-batch-size $mb --temperature 0.0015 --logit-scale 16 \
    --repeats $R16 --out "$OUT/step_cost_scoring_gpu_matched16_micro$mb.json"
done
part step_cost_sharp_micro1 80 "${STEP[@]}" --micro-batch-size 1 --temperature 0.0008 \
  --out "$OUT/step_cost_scoring_gpu_sharp_micro1.json"
echo "=== done $(date -u +%T)"
exec >&- 2>&-  # let tee write the log's tail before the script ends
wait
