"""ds_train's CUDA sources compile, on a machine without a GPU: torch builds them on a GPU machine at first use
(ds_train/csrc/gelu_matmul.cpp for -ge, softmax_grad.cu for the loss, bench/csrc/gemm_algos.cpp for
bench/gemm_algos.py), where a compile error would cost a lent GPU's time. Each is compiled here as torch's C++
extension tools would, with nvcc for the .cu and the host compiler for the .cpp, against torch's headers and the
CUDA toolkit's, and the functions the Python side calls are the ones each module defines. Needs nvcc and cuBLAS's
headers (scripts/cuda_headers.sh fetches those where the toolkit lacks them); skips without them."""

import os
import re
import shutil
import subprocess
import sysconfig

import pytest
import torch
from torch.utils import cpp_extension

from conftest import REPO

SOURCES = {  # source -> the Python files that call its functions
    "ds_train/csrc/gelu_matmul.cpp": ["ds_train/gelu_fusion.py"],
    "ds_train/csrc/softmax_grad.cu": ["ds_train/loss.py"],
    "bench/csrc/gemm_algos.cpp": ["bench/gemm_algos.py"],
}
TORCH_VERSION = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
# torch's extension tools build as C++17 on the GPU machines' torch 2.11 and as C++20 on newer releases (this
# machine's 2.13, whose headers still take C++17; 2.14's refuse it): each standard these headers are built with
STANDARDS = [std for std, used in (("c++17", TORCH_VERSION < (2, 14)), ("c++20", TORCH_VERSION >= (2, 12))) if used]
ARCH = "-gencode=arch=compute_90,code=sm_90"  # the H100's and H200's, where ds_train's GPU figures come from
# A header that CUDA builds of torch generate and its CPU builds leave out; this is its content in a CUDA build
CMAKE_MACROS = "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n"


def cuda_include_dirs() -> list[str]:
    """The CUDA toolkit's headers and, where they are elsewhere, cuBLAS's; skips the test without either."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA sources' compile check needs a CUDA toolkit's compiler")
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), os.path.dirname(os.path.dirname(nvcc)),
             "/usr/local/cuda"]
    toolkit = next((os.path.join(h, "include") for h in homes if h and os.path.isfile(
        os.path.join(h, "include", "cuda_runtime.h"))), None)
    if toolkit is None:
        pytest.skip(f"no cuda_runtime.h beside {nvcc} (set CUDA_HOME to the toolkit's folder)")
    dirs = [toolkit, os.path.join(REPO, ".venv", "cuda_include")]
    if not any(os.path.isfile(os.path.join(d, "cublasLt.h")) for d in dirs):
        pytest.skip("cuBLAS's headers not found beside nvcc's toolkit: bash scripts/cuda_headers.sh fetches them")
    return [d for d in dirs if os.path.isdir(d)]


@pytest.fixture(scope="module")
def include_flags(tmp_path_factory) -> list[str]:
    dirs = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"], *cuda_include_dirs()]
    if not any(os.path.isfile(os.path.join(d, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for d in dirs):
        generated = tmp_path_factory.mktemp("torch_generated")
        (generated / "c10" / "cuda" / "impl").mkdir(parents=True)
        (generated / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").write_text(CMAKE_MACROS)
        dirs.append(str(generated))
    # -isystem: warnings from torch's and CUDA's headers are theirs; ds_train's own code compiles without any
    return [flag for d in dirs for flag in ("-isystem", d)]


def compile_command(source: str, std: str, include_flags: list[str], obj: str) -> list[str]:
    defines = ["-DTORCH_EXTENSION_NAME=csrc_check", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    if source.endswith(".cu"):  # the flags torch's extension tools give nvcc, for Hopper
        nvcc_flags = getattr(cpp_extension, "COMMON_NVCC_FLAGS", [])
        return ["nvcc", "-c", source, "-o", obj, f"-std={std}", "-O3", ARCH, *nvcc_flags, "--compiler-options",
                "-fPIC", *defines, *include_flags]
    return ["c++", "-fsyntax-only", source, f"-std={std}", "-Wall", "-Wextra", "-Werror", *defines, *include_flags]


CASES = [(source, std) for source in SOURCES for std in (STANDARDS[:1] if source.endswith(".cu") else STANDARDS)]


@pytest.mark.parametrize("source,std", CASES, ids=[f"{os.path.basename(s)}-{std}" for s, std in CASES])
def test_each_cuda_source_compiles_as_torch_builds_it(source, std, include_flags, tmp_path):
    command = compile_command(source, std, include_flags, str(tmp_path / "out.o"))
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{source} ({std}) did not compile:\n{result.stdout}{result.stderr[-6000:]}"


@pytest.mark.parametrize("source", SOURCES)
def test_the_python_side_calls_only_functions_its_source_defines(source):
    with open(os.path.join(REPO, source)) as f:
        defined = set(re.findall(r'm\.def\("(\w+)"', f.read()))
    called = set()
    for caller in SOURCES[source]:
        with open(os.path.join(REPO, caller)) as f:  # extension().name(...), softmax_grad_extension().name(...), ext.name(...)
            called |= set(re.findall(r"(?:extension\(\)|\bext)\.(\w+)\(", f.read()))
    assert called, f"found no calls into {source} in {SOURCES[source]}"
    assert called <= defined, f"{SOURCES[source]} call {sorted(called - defined)}, which {source} does not define"
