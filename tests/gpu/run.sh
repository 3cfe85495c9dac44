#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build Glimpse with CUDA, run the tests that touch the GPU and
# the encoder and reranker benchmarks on it, and print the figures. Uses the machine's CUDA toolkit when `nvcc`
# is on the PATH, else CUDA 13.0 from PyPI wheels (tests/gpu/cuda-toolchain.sh).
#
#   tests/gpu/run.sh            # about 10 minutes on 16 cores, most of it compiling
set -euo pipefail
cd "$(dirname "$0")/../.."

nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv
if ! command -v nvcc >/dev/null; then
  # shellcheck source=tests/gpu/cuda-toolchain.sh
  GLIMPSE_CUDA_LIBS=link source tests/gpu/cuda-toolchain.sh
fi
nvcc --version | tail -2

echo "== the encoder on the GPU against transformers' fixtures (f32 and bf16)"
cargo test --release --locked -p glimpse-worker --features cuda --lib -- \
  --nocapture --test-threads 1 gpu
echo "== glimpse bench encode on the GPU"
cargo build --release --locked -p glimpse --features cuda
./target/release/glimpse bench encode --library-vectors 100000
echo "== the vision-language reranker on the GPU (bf16): 10 candidates per search, training pairs/s"
echo "   (GLIMPSE_RERANKER_MODEL: a Qwen2-VL directory, or a Hub id downloaded on first use)"
./target/release/glimpse bench rerank --model "${GLIMPSE_RERANKER_MODEL:-Qwen/Qwen2-VL-2B-Instruct}"
