#!/usr/bin/env bash
# Exploratory sweep of bc settings for push and stack on a lent GPU machine: several runs at once
# (each training process is host-bound, so they share the GPU well). Not a benchmark: it picks the
# settings that benchmarks/bc.py then measures on the CPU machine. Usage: bc_sweep.sh RESULTS_DIR
set -u
results=${1:?results folder}
mkdir -p "$results"
rl() { python3 -m robolearn.cli "$@"; }
for task in push stack lift; do
  rl record --task "$task" --out "demos/$task" --episodes 50 --image-size 64 --workers 14 >/dev/null 2>&1 &
done
wait
run() {  # name task steps extra-train-flags...
  local name=$1 task=$2 steps=$3
  shift 3
  rl train "demos/$task" --out "policies/$name" --steps "$steps" --batch-size 64 --bc.history 2 \
    --eval-every 2000 --eval-episodes 20 --device cuda "$@" >"$results/$name.train.log" 2>&1 &&
    rl eval "policies/$name" --episodes 50 --workers 2 --weights best >"$results/$name.eval.log" 2>&1
  echo "$name $(grep -o 'success rate: [0-9.]*%' "$results/$name.eval.log")" | tee -a "$results/summary.txt"
}
run push-base push 4000 &
run push-aux push 4000 --bc.aux-weight 1 &
run push-aux-8k push 8000 --bc.aux-weight 1 &
run stack-base stack 4000 &
run stack-aux stack 4000 --bc.aux-weight 1 &
run stack-aux-8k stack 8000 --bc.aux-weight 1 &
run lift-aux lift 4000 --bc.aux-weight 1 &
wait
