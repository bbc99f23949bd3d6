#!/usr/bin/env bash
# Packs what the GPU checks need for a machine that has a CUDA 13 driver and toolkit but none of
# the build's other packages (the device tool's machines: no OpenBLAS, gRPC, cJSON...; nothing
# can be installed there). Builds build-gpu (Release, sm_90, no oneDNN, no -march=native: the
# other machine's CPU may lack this one's instructions), then writes DIR/bin (mrank,
# test_backend, bench_cuda, loadgen and the GPU module libmrank_cuda.so, which they load from
# beside themselves), DIR/libs.tar.xz (every shared library they load except glibc,
# libstdc++, libgcc_s and CUDA's, which that machine has newer or its own) and DIR/env.sh.
# On the other machine, from the repo root: `source DIR/env.sh` unpacks into /tmp/mrank-gpu,
# finds CUDA's libraries, and puts wrappers at build/mrank, build/test_backend,
# build/bench_cuda and build/bench/cluster/loadgen that run the carried binaries with those
# libraries (only the wrappers see them: python3 keeps its own OpenSSL and zlib). Then
# `build/test_backend cuda`, `bash scripts/gpu_check.sh OUT bundled-d8`, bench_cuda and `NO_BUILD=1 BACKEND=cuda PY=python3
# ENGINE_REPS=0 bash bench/cluster/saturation.sh` run as here (bench_prefill is not carried).
# Files git ignores do not travel with the tree: the seeded checks borrow
# third_party/tokenizers/llama2/tokenizer.json, which must be carried too.
# About 16 MB: the device tool carries at most 64 MB with the tracked files (models/ take 48).
# Usage: bash scripts/gpu_bundle.sh [DIR]   (default .devkit; add it to .git/info/exclude)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.devkit}
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMR_ONEDNN=OFF -DMR_NATIVE=OFF \
  -DMR_CUDA=ON > /dev/null
cmake --build build-gpu -j"$(nproc)" --target mrank mrank_cuda test_backend bench_cuda \
  loadgen > /dev/null
rm -rf "$dir" && mkdir -p "$dir/bin"
bins=(mrank test_backend bench_cuda bench/cluster/loadgen)   # paths in the build folder
for b in "${bins[@]}" libmrank_cuda.so; do cp "build-gpu/$b" "$dir/bin/"; done
libs=$(mktemp -d)
trap 'rm -rf "$libs"' EXIT
for b in "${bins[@]}" libmrank_cuda.so; do ldd "build-gpu/$b"; done |
  awk '$2 == "=>" {print $3}' | sort -u |
  grep -v -E '/(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+)\.so' |
  grep -v -E '/libcu(blas|blasLt|dart)\.so|/cuda' |
  while read -r so; do cp -L "$so" "$libs/"; done
tar -cf - -C "$libs" . | xz -9 -T"$(nproc)" > "$dir/libs.tar.xz"
# test_backend writes its seeded checkpoints under the build folder it was compiled in
cat > "$dir/env.sh" <<EOF
# source from the repo root on the GPU machine (written by scripts/gpu_bundle.sh)
_k=\$(CDPATH= cd "\$(dirname "\${BASH_SOURCE[0]}")" && pwd)
mkdir -p /tmp/mrank-gpu/lib build "$PWD/build-gpu"
tar -xJf "\$_k/libs.tar.xz" -C /tmp/mrank-gpu/lib
_ldp=/tmp/mrank-gpu/lib
for _n in libcublasLt.so.13 libcublas.so.13 libcudart.so.13; do
  _p=\$(ldconfig -p 2>/dev/null | awk -v n="\$_n" '\$1 == n {p = \$NF} END {print p}')
  [ -n "\$_p" ] || _p=\$(find /usr/local /opt /usr/lib -name "\$_n" 2>/dev/null | sed -n 1p)
  if [ -n "\$_p" ]; then _ldp="\$_ldp:\$(dirname "\$_p")"; else echo "env.sh: no \$_n found" >&2; fi
done
for _b in ${bins[*]}; do
  mkdir -p "build/\$(dirname "\$_b")"
  printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec "%s/bin/%s" "\$@"\n' "\$_ldp" "\$_k" "\${_b##*/}" \
    > "build/\$_b"
  chmod +x "build/\$_b"
done
# for tools that must run the binary itself (compute-sanitizer)
export MR_GPU_LD_LIBRARY_PATH=\$_ldp
unset _k _ldp _n _p _b
EOF
du -sh "$dir"
