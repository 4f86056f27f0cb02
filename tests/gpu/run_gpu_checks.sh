#!/usr/bin/env bash
# GPU checks for the attention kernels, in one command from the repository root on a machine with an NVIDIA GPU
# (jax[cuda12] installed):   bash tests/gpu/run_gpu_checks.sh [output-dir]
# Runs the GPU tests (compiled Pallas kernel and cuDNN path vs the XLA reference), then the attention
# benchmark (1k..16k, head dim 128, causal and not, forward and forward+backward), then the goals.
# Everything is also written under the output dir (default gpu_checks/). Exit status: non-zero if any step fails.
set -uo pipefail
out="${1:-gpu_checks}"
mkdir -p "$out"
status=0
python -c "import jax, sys; print(jax.devices()); sys.exit(jax.default_backend() != 'gpu')" \
  || { echo "run_gpu_checks: jax sees no GPU; install jax[cuda12] on a GPU machine" >&2; exit 2; }
python -m pytest -n 0 tests/gpu tests/kernels/test_pallas_gpu.py -q -rs 2>&1 | tee "$out/tests.txt" || status=1
jdistill bench attention --seq "${BENCH_SEQ:-1024,2048,4096,8192,16384}" --head-dim 128 \
  --json "$out/bench.jsonl" 2>&1 | tee "$out/bench.txt" || status=1
python tests/gpu/check_goals.py "$out/bench.jsonl" 2>&1 | tee "$out/goals.txt" || status=1
exit $status
