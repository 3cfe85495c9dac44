# A CUDA 13.0 toolchain from PyPI wheels, for building Glimpse with `--features cuda` where no CUDA
# toolkit is installed. Source it from the repository root:
#
#   source tests/gpu/cuda-toolchain.sh          # nvcc and headers: enough for `cargo check`
#   GLIMPSE_CUDA_LIBS=link source tests/gpu/cuda-toolchain.sh
#                                               # + nvrtc, cuRAND, cuBLAS to link against, and the
#                                               #   driver's libcuda (a machine with an NVIDIA GPU)
#
# Pins: CUDA 13.0 (nvcc 13.0.88). candle compiles its kernels to PTX with this nvcc and the driver
# loads that PTX at run time, so a newer nvcc would make PTX that a 13.0 driver refuses; cudarc
# 0.19 knows CUDA versions up to 13.4 only. Exports PATH, CUDA_HOME, CUDARC_CUDA_VERSION,
# CUDAFORGE_THREADS and, without an `nvidia-smi` to ask, CUDA_COMPUTE_CAP=90 (H100/H200).

glimpse_cuda_toolchain() {
  local venv="$PWD/target/cuda-venv"
  local wheels="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85"
  if [ "${GLIMPSE_CUDA_LIBS:-}" = link ]; then
    wheels="$wheels nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.1.0.3"
  fi
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || return 1
  # shellcheck disable=SC2086 # one word per wheel
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --only-binary=:all: $wheels ||
    return 1
  local cuda
  cuda=$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)
  [ -x "$cuda/bin/nvcc" ] || { echo "no nvcc under $cuda" >&2; return 1; }
  # The wheels ship versioned libraries only; the linker looks for the plain names.
  ln -sfn libcudart.so.13 "$cuda/lib/libcudart.so"
  if [ "${GLIMPSE_CUDA_LIBS:-}" = link ]; then
    local library
    for library in nvrtc.so.13 curand.so.10 cublas.so.13 cublasLt.so.13; do
      ln -sfn "lib$library" "$cuda/lib/lib${library%.so.*}.so"
    done
    local driver
    driver=$(ldconfig -p | awk '/libcuda\.so\.1 .*x86-64/ {print $NF; exit}')
    [ -n "$driver" ] || { echo "no NVIDIA driver (libcuda.so.1) on this machine" >&2; return 1; }
    ln -sfn "$driver" "$cuda/lib/libcuda.so"
    export LD_LIBRARY_PATH="$cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  export PATH="$cuda/bin:$PATH"    # cudarc runs `nvcc --version`; candle-kernels finds nvcc here
  export CUDA_HOME="$cuda"         # headers, and the libraries cudarc links
  export CUDARC_CUDA_VERSION=13000
  export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
  if [ -z "${CUDA_COMPUTE_CAP:-}" ] && ! command -v nvidia-smi >/dev/null; then
    export CUDA_COMPUTE_CAP=90
  fi
}

glimpse_cuda_toolchain
