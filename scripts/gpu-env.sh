# Sourced by the GPU scripts (gpu-check.sh, pretrain-seeds.sh with a cuda:N variant): puts the CUDA
# runtime libraries of pip's `nvidia-*` wheels (PyTorch ships them) on LD_LIBRARY_PATH, so the
# CUDA build of idat-pipe finds libcublas.so.13 & co. without a system CUDA. Uses $PYTHON
# (default python3); does nothing when that Python has no `nvidia` package.
command -v "${PYTHON:-python3}" >/dev/null \
    || echo "[gpu-env] no ${PYTHON:-python3}: LD_LIBRARY_PATH left as it is" >&2
gpu_env_libs=$("${PYTHON:-python3}" - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
dirs = set()
for base in list(getattr(nvidia, "__path__", [])):
    for so in glob.glob(os.path.join(base, "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
EOF
) || gpu_env_libs=""   # sourced under `set -e` by pretrain-seeds.sh: never exit the caller
if [ -n "$gpu_env_libs" ]; then
  export LD_LIBRARY_PATH="$gpu_env_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "[gpu-env] LD_LIBRARY_PATH += pip nvidia wheel libs ($(echo "$gpu_env_libs" | tr ':' '\n' | wc -l) dirs)" >&2
fi
