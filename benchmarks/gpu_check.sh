#!/usr/bin/env bash
# The GPU paths, checked end to end on one CUDA machine (CI has no GPU, so this is run by hand):
#   extract on the GPU; train with fp16 autocast + GradScaler and with bf16, channels_last; kill -9 and resume;
#   a NaN-producing learning rate stops the run with the last checkpoint intact; evaluate on the GPU;
#   NCCL with two processes (on one GPU when that is all there is); the train-step benchmark on the GPU.
#
#     bash benchmarks/gpu_check.sh [WORK_DIR] [RESULTS_DIR]       # PY=python3 to use another interpreter
#     ONLY="prepare teacher_file extract_gpu train_fp16 kill_and_resume_fp16" SKIP_BENCH=1 bash benchmarks/gpu_check.sh
#
# Every check prints PASS or FAIL with its reason; the exit code is the number of FAILs.
set -u
PY=${PY:-.venv/bin/python}
W=${1:-artifacts/gpu_check}
R=${2:-$W}
mkdir -p "$W" "$R"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd) PYTHONUNBUFFERED=1
CC="$PY -m stages"
fails=0
check() {  # check NAME COMMAND...: runs it, logs to $W/NAME.log
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi  # ONLY="name name ...": a subset
  local t0=$SECONDS
  if "$@" >"$W/$name.log" 2>&1; then echo "PASS $name ($((SECONDS - t0)) s)"
  else echo "FAIL $name ($((SECONDS - t0)) s): $(tail -n 3 "$W/$name.log" | tr '\n' ' ' | cut -c1-400)"; fails=$((fails + 1)); fi
}

nvidia-smi -L || { echo "no GPU visible"; exit 1; }
$PY -c "import torch, faiss, zarr; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('faiss', faiss.__version__, 'gpus', faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0, '| zarr', zarr.__version__)"

# data and a random ResNet-50 teacher (nothing can be downloaded)
check prepare $CC prepare --dataset digits --out "$W/data"
check teacher_file $PY -c "
from pipeline.models.modelfile import default_preprocessing, save_model
from pipeline.models.backbones import build_backbone
save_model('$W/t.pt', build_backbone('resnet50', small_input=True, seed=1), default_preprocessing(8))"
check extract_gpu $CC extract --data "$W/data" --weights "$W/t.pt" --out "$W/t.zarr" --device cuda --no-progress
check extract_multiview_gpu $CC extract --data "$W/data" --weights "$W/t.pt" --out "$W/t4.zarr" --views 4 \
  --device cuda --no-progress

TRAIN=(train --data "$W/data" --cache "$W/t.zarr" --student resnet18 --small-input --input-size 8 --epochs 3
       --batch-size 128 --bank-size 1024 --device cuda --channels-last --no-tensorboard --seed 0)
check train_fp16 $CC "${TRAIN[@]}" --out "$W/fp16" --amp fp16 --method compress-2q
check train_bf16 $CC "${TRAIN[@]}" --out "$W/bf16" --amp bf16 --method compress-1q
check train_live_fp16 $CC "${TRAIN[@]}" --out "$W/live" --amp fp16 --method compress-2q --teacher-source live \
  --teacher-weights "$W/t.pt"
check train_multiview $CC "${TRAIN[@]}" --cache "$W/t4.zarr" --out "$W/mv" --amp bf16 --method compress-2q
for m in reg crd cc seed moco supervised; do
  check "train_$m" $CC "${TRAIN[@]}" --out "$W/m_$m" --amp bf16 --method $m --epochs 1
done

# kill -9 mid-run, resume with the same command; compare with the uninterrupted fp16 run
resume() {
  $CC "${TRAIN[@]}" --out "$W/resume" --amp fp16 --method compress-2q --checkpoint-every 5 &
  local pid=$!
  for _ in $(seq 600); do [ -f "$W/resume/checkpoint.pt" ] && break; sleep 0.1; done
  kill -9 $pid; wait $pid 2>/dev/null
  [ -f "$W/resume/model.pt" ] && { echo "finished before the kill; nothing tested"; return 1; }
  $CC "${TRAIN[@]}" --out "$W/resume" --amp fp16 --method compress-2q --checkpoint-every 5 || return 1
  $PY -c "
import torch
a = torch.load('$W/fp16/model.pt', weights_only=True)['state_dict']
b = torch.load('$W/resume/model.pt', weights_only=True)['state_dict']
d = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print('max |w_resumed - w_uninterrupted| =', d, '(GPU kernels are not bitwise deterministic)')
assert d < 5e-2, d"
}
check kill_and_resume_fp16 resume

# a learning rate that blows up must stop the run with a message, the last checkpoint intact
nan_stop() {
  ! $CC "${TRAIN[@]}" --out "$W/nan" --amp bf16 --method reg --lr 1e12 --checkpoint-every 2 >"$W/nan.out" 2>&1 \
    && grep -qi "non-finite\|nan" "$W/nan.out" && cat "$W/nan.out" | tail -n 2
}
check nan_stops_cleanly nan_stop

check eval_teacher_gpu $CC eval --data "$W/data" --cache "$W/t.zarr" --out "$W/eval_teacher.json" --device cuda \
  --probe-epochs 5
check eval_student_gpu $CC eval --data "$W/data" --model "$W/fp16/model.pt" --out "$W/eval_fp16.json" --device cuda \
  --probe-epochs 5

[ -n "${SKIP_BENCH:-}" ] || check bench_train_step $PY benchmarks/train_step.py --device cuda --amp bf16 --size 32 --batch 256 --steps 20 \
  --rounds 5 --out "$R/train_step_gpu.json"
[ -n "${SKIP_BENCH:-}" ] || tail -n 3 "$W/bench_train_step.log"

# NCCL: two processes; on a one-GPU machine both use cuda:0 (NCCL may refuse a shared GPU: the log says so)
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
DEV=$([ "$NGPU" -ge 2 ] && echo cuda || echo cuda:0)
if [ "$NGPU" -lt 2 ]; then  # NCCL 2.28 refuses it: "Duplicate GPU detected : rank 0 and rank 1 both on CUDA device"
  echo "SKIP nccl_allgather, ddp_nccl_train: one GPU, and NCCL refuses two ranks on one GPU"
else
check nccl_allgather timeout 90 $PY -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/nccl_probe.py $DEV
check ddp_nccl_train timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node=2 -m stages \
  "${TRAIN[@]}" --out "$W/ddp" --amp fp16 --method compress-2q --device $DEV
fi

cp "$W"/eval_*.json "$R"/ 2>/dev/null
echo "$fails check(s) failed"
exit $fails
