#!/usr/bin/env bash
# cuBLAS's, cuSPARSE's and cuSOLVER's headers for tests/test_csrc.py, which compiles ds_train's CUDA sources with
# nvcc and torch's headers on a machine without a GPU (torch's CUDA headers include all three). A CUDA toolkit that
# has nvcc but not the math libraries (this project's CI machines) gets them from NVIDIA's wheels of the toolkit's
# release, headers only, into .venv/cuda_include: about 0.8 GB downloaded, 1.2 MB kept. Nothing to do where
# there is no nvcc or its toolkit has the headers. scripts/setup.sh --dev runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.venv/cuda_include
nvcc_bin=$(command -v nvcc) || exit 0
for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}" "$(dirname "$(dirname "$nvcc_bin")")" /usr/local/cuda; do
  [ -n "$home" ] && [ -f "$home/include/cublasLt.h" ] && exit 0
done
[ -f "$dest/cublasLt.h" ] && exit 0
release=$(nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
case $release in
  13.0) wheels=("nvidia-cublas==13.0.*" "nvidia-cusparse==12.6.*" "nvidia-cusolver==12.0.*") ;;  # CUDA 13.0's own
  13.*) wheels=("nvidia-cublas==$release.*" nvidia-cusparse nvidia-cusolver) ;;
  12.*) wheels=("nvidia-cublas-cu12==$release.*" nvidia-cusparse-cu12 nvidia-cusolver-cu12) ;;
  *) echo "cuda_headers.sh: nvcc's CUDA $release has no cuBLAS headers and no wheels here to take them from;" \
          "tests/test_csrc.py will skip" >&2; exit 0 ;;
esac
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
echo "cuda_headers.sh: cuBLAS, cuSPARSE and cuSOLVER headers for CUDA $release into $dest (the wheels are ~0.8 GB)"
if ! .venv/bin/python -m pip download -q --no-deps --dest "$download" "${wheels[@]}"; then
  echo "cuda_headers.sh: could not download ${wheels[*]}; tests/test_csrc.py will skip" >&2
  exit 0  # the headers serve one test file: the rest of the suite runs without them
fi
.venv/bin/python - "$download" "$download/include" <<'EOF'
import os, sys, zipfile
download, dest = sys.argv[1:]
for wheel in sorted(w for w in os.listdir(download) if w.endswith(".whl")):
    with zipfile.ZipFile(os.path.join(download, wheel)) as z:
        for name in z.namelist():  # nvidia/<library or cu13>/include/<header path>
            parts = name.split("/")
            if len(parts) > 3 and parts[2] == "include" and not name.endswith("/"):
                path = os.path.join(dest, *parts[3:])
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as out:
                    out.write(z.read(name))
EOF
rm -rf "$dest"
mv "$download/include" "$dest"  # whole or not at all: a partial folder would pass the check above
