# Sourced at the start of every device call (docs/RESULTS.md, "GPU session"): environment, the wheels
# carried in this call (.carry/whl_*), and the repo itself, installed once per machine.
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # KINDS.md: keep multicast off
export ACTSPARSE_CACHE=/root/cache PYTHONPATH=/tmp/site:/root/pkgs
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for d in .carry/whl_*; do [ -n "${SKIP_WHEELS:-}" ] && break    # SKIP_WHEELS=1: a dry run here
  [ -d "$d" ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$d"/*.whl 2>&1 | grep -v "^WARNING: Target directory" || true
done
if ! (cd /tmp && python3 -c "import actsparse.kernels, actsparse.modeling" 2>/dev/null); then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/site . || { echo "install failed"; exit 1; }
fi
{ date -u +%FT%TZ; nvidia-smi -L; python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"; } | tee -a "$OUT/device.txt"
