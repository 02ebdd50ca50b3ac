#!/usr/bin/env bash
# Install llama-cpp-python into the project venv, building llama.cpp from source as a portable x86-64 CPU build.
#
#   scripts/install_llama_cpp.sh                 # into .venv (about 5-8 minutes on 2 cores)
#   PYTHON=/path/to/python scripts/install_llama_cpp.sh
#   LLAMA_CPP_SDIST=/tmp/lcp/llama_cpp_python-0.3.36.tar.gz scripts/install_llama_cpp.sh   # offline, from a local sdist
#   EXTRA_CMAKE_ARGS="-DGGML_AVX512=OFF" scripts/install_llama_cpp.sh                      # more flags
#
# Why not the default build: llama-cpp-python compiles llama.cpp with GGML_NATIVE=ON (-march=native).
# On our AMD EPYC (AVX-512) build machines that build runs F32/F16 GGUF files but segfaults on
# Q8_0 and Q4_0 ones. Turning native off and naming the ISA extensions ourselves (AVX2, FMA, F16C: every
# x86-64 CPU of the last decade) gives a build that runs every type we produce, and also runs on
# machines other than the one that built it (a Docker image built on one host and run on another).
#
# LLAVA_BUILD=OFF skips the multimodal library (mtmd): we never load images, llama-cpp-python imports it
# only for its multimodal chat handlers, and it is a sizeable part of the build time.
#
# The wheel cache is bypassed on purpose: pip would otherwise reuse a wheel built earlier with other
# CMAKE_ARGS (the cache key is the sdist, not the flags), and silently bring the segfault back.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

if [[ ! -x "$PYTHON" ]]; then
    echo "error: no python at $PYTHON; create the venv first (make venv) or set PYTHON=/path/to/python" >&2
    exit 1
fi
for tool in cmake cc c++; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: '$tool' not found; llama.cpp is compiled from source: install cmake and a C/C++ compiler" \
             "(Debian: apt-get install cmake build-essential)" >&2
        exit 1
    fi
done

export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF ${EXTRA_CMAKE_ARGS:-}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
SOURCE="llama-cpp-python==$VERSION"
if [[ -n "${LLAMA_CPP_SDIST:-}" ]]; then
    SOURCE="$LLAMA_CPP_SDIST"
fi

echo "building $SOURCE with CMAKE_ARGS='$CMAKE_ARGS' on $CMAKE_BUILD_PARALLEL_LEVEL job(s)"
start=$(date +%s)
"$PYTHON" -m pip uninstall -y llama-cpp-python >/dev/null 2>&1 || true
"$PYTHON" -m pip install --no-cache-dir --no-binary llama-cpp-python "$SOURCE"
echo "built and installed in $(( $(date +%s) - start )) s"

# Smoke check: the library loads and reports the ISA it was built for (AVX2 = 1, no AVX512).
"$PYTHON" -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__); print(llama_cpp.llama_print_system_info().decode())'
