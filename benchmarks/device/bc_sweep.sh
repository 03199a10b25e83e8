#!/usr/bin/env bash
# Exploratory sweep of bc settings on a lent GPU machine: many runs at once (each training process
# is host-bound, so they share the GPU well). Not a benchmark: it picks the settings that
# benchmarks/bc.py then measures on the CPU machine. Usage: bc_sweep.sh RESULTS_DIR
# Each run line: name, dataset (task-size), steps, then extra `robolearn train` flags.
set -u
results=${1:?results folder}
mkdir -p "$results"
export OMP_NUM_THREADS=1
rl() { python3 -m robolearn.cli "$@"; }
for dataset in push-64 stack-64 lift-64 push-96; do
  rl record --task "${dataset%-*}" --out "demos/$dataset" --episodes 50 --image-size "${dataset#*-}" --workers 4 \
    >"$results/record-$dataset.log" 2>&1 &
done
wait
run() {
  local name=$1 dataset=$2 steps=$3
  shift 3
  rl train "demos/$dataset" --out "policies/$name" --steps "$steps" --batch-size 64 --bc.history 2 \
    --bc.aux-weight 1 --eval-every 1000 --eval-episodes 20 --device cuda "$@" >"$results/$name.train.log" 2>&1
  rl eval "policies/$name" --episodes 50 --workers 1 --weights best >"$results/$name.eval.log" 2>&1
  cp "policies/$name/log.jsonl" "$results/$name.log.jsonl"
  local checks
  checks=$(grep -o '"eval_success_rate": [0-9.]*' "policies/$name/log.jsonl" | grep -o '[0-9.]*$' | paste -sd,)
  echo "$name checks=$checks held-out=$(grep -o 'success rate: [0-9.]*%' "$results/$name.eval.log")" |
    tee -a "$results/summary.txt"
}
while read -r line; do
  [[ -z $line || $line == \#* ]] && continue
  # shellcheck disable=SC2086
  run $line &
done <<'RUNS'
push-ref push-64 4000
push-fine push-64 4000 --bc.strides 2 1 1
push-96 push-96 4000
push-fine-96 push-96 4000 --bc.strides 2 1 1
push-first push-64 4000 --bc.execute first
push-gmm push-64 4000 --bc.head gmm
push-reg push-64 4000 --bc.dropout 0.2 --weight-decay 0.05
push-chunk16 push-64 4000 --bc.chunk 16
push-lr3e-4 push-64 4000 --lr 3e-4
push-fine-reg push-64 4000 --bc.strides 2 1 1 --bc.dropout 0.2 --weight-decay 0.05
stack-ref stack-64 4000
stack-fine stack-64 4000 --bc.strides 2 1 1
lift-fine lift-64 4000 --bc.strides 2 1 1
RUNS
wait
