# device call (nvidia-h100-x1, 2026-12-07 23:05, the code of this commit but for the fix in the NOTES):
export TORCH_CUDA_ARCH_LIST=9.0 PATH=$PATH:/usr/local/cuda/bin TORCH_EXTENSIONS_DIR=/tmp/tx PYTHONUNBUFFERED=1
mkdir -p $OUT/r
python3 bench/host_probe.py > $OUT/r/host.txt 2>&1
timeout 500 python3 bench/gemm_algos.py --models d24 d48 > $OUT/r/gemm_algos.txt 2>&1
# then, carrying .whl, the GELU tests with DS_TRAIN_GELU_ALGO_RANKS (since removed):
#   source bench/device_env.sh; python3 -m pytest -q -rs -p no:cacheprovider tests/test_model.py -k "gelu or candidate"
