#!/usr/bin/env bash
# Build the CUDA binary (`--features cuda`) on a machine with NO GPU and NO system CUDA.
#
# Recipe (checked, see docs/gpu.md): NVIDIA's CUDA 13.0.x toolkit from PyPI wheels in a venv,
# a CUDA_ROOT of symlinks into it, and a link-only stub libcuda.so (the real one comes with the
# driver on the GPU machine). Output: target/cuda/release/idat-pipe.
#
#   scripts/cuda-build.sh            # build
#   CUDA_COMPUTE_CAP=90 (default: H100/H200), CUDA_VENV=.venv-cuda, CARGO_TARGET_DIR=target/cuda
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${CUDA_VENV:-$ROOT/.venv-cuda}
CUDA_ROOT=${CUDA_ROOT_OUT:-$ROOT/target/cuda-root}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/cuda}
PY=${PYTHON:-python3}

log() { printf '[cuda-build] %s\n' "$*" >&2; }

# 1. The toolkit from PyPI (13.0.x: PTX from a newer nvcc can be refused by a 13.0 driver).
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
if [ ! -x "$SITE/nvidia/cu13/bin/nvcc" ]; then
  log "installing cuda-toolkit 13.0.2 wheels (about 680 MB)"
  "$VENV/bin/pip" install -q "cuda-toolkit[nvcc,crt,nvvm,cccl,cudart,cublas,curand,nvrtc]==13.0.2"
fi
CU=$SITE/nvidia/cu13
[ -x "$CU/bin/nvcc" ] || { log "nvcc not found under $CU/bin"; exit 1; }

# 2. CUDA_ROOT: bin/include/nvvm -> wheels; unversioned lib names the linker wants.
mkdir -p "$CUDA_ROOT/lib64/stubs"
for d in bin include nvvm; do ln -sfn "$CU/$d" "$CUDA_ROOT/$d"; done
for lib in cudart cublas cublasLt curand nvrtc; do
  real=$(ls "$CU"/lib/lib$lib.so.* 2>/dev/null | sort | head -n 1 || true)
  [ -n "$real" ] || { log "missing lib$lib.so.* in $CU/lib"; exit 1; }
  ln -sfn "$real" "$CUDA_ROOT/lib64/lib$lib.so"
done

# 3. Link-only stub libcuda.so (soname libcuda.so.1) exporting every cu* symbol cudarc declares.
CUDARC_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort | tail -n 1 || true)
if [ -z "$CUDARC_SRC" ]; then cargo fetch -q; CUDARC_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort | tail -n 1); fi
STUB=$CUDA_ROOT/lib64/stubs/libcuda.so
if [ ! -s "$STUB" ]; then
  log "building stub $STUB from $CUDARC_SRC"
  grep -oE "fn (cu[A-Za-z0-9_]+)\(" "$CUDARC_SRC/src/driver/sys/mod.rs" | sed -E 's/fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u \
    | awk '{print "void " $1 "(void) {}"}' > "$CUDA_ROOT/lib64/stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB" "$CUDA_ROOT/lib64/stubs/libcuda_stub.c"
  # A stub made after a first failed build would not be seen by a cached cudarc build script.
  cargo clean -q -p cudarc 2>/dev/null || true
fi

# 4. Build.
export CUDA_ROOT PATH="$CUDA_ROOT/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
export NVCC_CCBIN=${NVCC_CCBIN:-gcc}
log "cargo build --release --features cuda (compute cap $CUDA_COMPUTE_CAP, target $CARGO_TARGET_DIR)"
cargo build --release --locked --features cuda --bin idat-pipe
BIN=$CARGO_TARGET_DIR/release/idat-pipe
ls -l "$BIN"
log "needs at run time: libcuda.so.1 (driver), libcublas.so.13, libcublasLt.so.13, libcudart.so.13, libcurand.so.10, libnvrtc.so.13"
log "on the GPU machine: export LD_LIBRARY_PATH=<dir with those>:\$LD_LIBRARY_PATH; ldd $BIN | grep 'not found' must print nothing"
