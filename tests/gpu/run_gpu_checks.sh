#!/usr/bin/env bash
# GPU checks for the attention kernels, in one command from the repository root on a machine with an NVIDIA GPU
# (jax[cuda12] installed):   bash tests/gpu/run_gpu_checks.sh [output-dir]
# Runs the GPU tests (compiled Pallas kernel and cuDNN path vs the XLA reference), then the attention
# benchmark (1k..16k, head dim 128, causal and not, forward and forward+backward), then the goals, then
# the mixture-of-experts benchmark (`jax.lax.ragged_dot` dispatch vs the dense MLP of equal active parameters).
# Without jdistill installed (a bare GPU image): JDISTILL="python3 -m jdistill.cli" PYTHONPATH=$PWD bash ...
# Everything is also written under the output dir (default gpu_checks/). Exit status: non-zero if any step fails.
set -uo pipefail
out="${1:-gpu_checks}"
mkdir -p "$out"
status=0
python3 -c "import jax, sys; print(jax.devices()); sys.exit(jax.default_backend() != 'gpu')" \
  || { echo "run_gpu_checks: jax sees no GPU; install jax[cuda12] on a GPU machine" >&2; exit 2; }
jdistill="${JDISTILL:-jdistill}"
# --noconftest: the suite's conftest pins JAX to the CPU and builds the embedded datasets; these tests need neither.
JAX_PLATFORMS=cuda python3 -m pytest -p no:cacheprovider --noconftest -n 0 tests/gpu -q -rs 2>&1 \
  | tee "$out/tests.txt" || status=1
$jdistill bench attention --seq "${BENCH_SEQ:-1024,2048,4096,8192,16384}" --head-dim 128 \
  --json "$out/bench.jsonl" 2>&1 | tee "$out/bench.txt" || status=1
python3 tests/gpu/check_goals.py "$out/bench.jsonl" 2>&1 | tee "$out/goals.txt" || status=1
# MoE: a Qwen3-30B-A3B-like layer (d 2048, 128 experts, top-8, expert hidden 768) at 4k and 16k tokens
$jdistill bench moe --tokens "${MOE_TOKENS:-4096,16384}" --d-model 2048 --experts 128 --top-k 8 \
  --expert-dim 768 --repeats 5 --json "$out/moe.json" 2>&1 | tee "$out/moe.txt" || status=1
exit $status
