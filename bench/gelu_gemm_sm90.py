"""The MLP's GELU matmuls as CUTLASS GEMMs for Hopper with GELU in the epilogue (bench/csrc/gelu_gemm_sm90.cuh), in
several tile shapes, clusters and schedules, against cuBLAS's plain matmul (the speed to reach), ds_train's cuBLASLt
epilogues (-ge 2) and the unfused pair (a cuBLAS matmul, then inductor's GELU), for the shapes of d12, d24 and d48 at
their scripts' micro-batches. Prints the first call's seconds, the median ms and TFLOP/s of each, and each fused result's error against the
unfused one relative to its largest value. A trial that the trainer did not keep (docs/performance.md: the
CUTLASS kernels were 8-15% faster alone, and the training step 0.2-0.8% faster).
    python bench/gelu_gemm_sm90.py [CONFIG ...]   (a GPU of compute capability 9.0, nvcc, and CUTLASS's C++ headers:
                                                   CUTLASS_DIR, a CUTLASS checkout, or the nvidia-cutlass package,
                                                   `pip install --no-deps nvidia-cutlass`; builds all first, in parallel)
"""

import importlib.util
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train import gelu_fusion  # noqa: E402
from gelu_epilogue import unfused_forward  # noqa: E402  (bench/, the script's own folder)
from mlp_kernels import print_header, print_row, shape_cases, unfused_dgelu  # noqa: E402

# name: (tile M, N, K), (cluster M, N), schedule
CONFIGS = {
    "pp_128x128_1x1": ((128, 128, 64), (1, 1), "Pingpong"),
    "pp_64x256_1x1": ((64, 256, 64), (1, 1), "Pingpong"),
    "pp_128x128x128_1x1": ((128, 128, 128), (1, 1), "Pingpong"),
    "pp_128x192_1x1": ((128, 192, 64), (1, 1), "Pingpong"),
    "pp_128x128_2x1": ((128, 128, 64), (2, 1), "Pingpong"),
    "pp_128x128_1x2": ((128, 128, 64), (1, 2), "Pingpong"),
    "coop_128x256_1x1": ((128, 256, 64), (1, 1), "Cooperative"),
    "coop_256x128_1x1": ((256, 128, 64), (1, 1), "Cooperative"),
    "coop_256x128_2x1": ((256, 128, 64), (2, 1), "Cooperative"),
    "coop_128x256_1x2": ((128, 256, 64), (1, 2), "Cooperative"),
}


def cutlass_include_dirs():
    """CUTLASS's headers: under CUTLASS_DIR if it is set, else the nvidia-cutlass package's copy."""
    root = os.environ.get("CUTLASS_DIR")
    if root is None:
        try:
            spec = importlib.util.find_spec("cutlass_library")  # finds the package without importing it
        except ValueError:
            spec = None
        if spec is None or spec.origin is None:
            sys.exit("CUTLASS's headers: set CUTLASS_DIR to a CUTLASS checkout or pip install --no-deps nvidia-cutlass")
        root = os.path.join(os.path.dirname(spec.origin), "source")
    dirs = [os.path.join(root, "include"), os.path.join(root, "tools", "util", "include")]
    if not os.path.isfile(os.path.join(dirs[0], "cutlass", "cutlass.h")):
        sys.exit(f"CUTLASS's headers: {dirs[0]}/cutlass/cutlass.h is missing")
    return dirs


def build(names):
    from torch.utils.cpp_extension import load
    csrc = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
    folder = tempfile.mkdtemp(prefix="gelu_gemm_sm90_")
    sources, decls, defs = [], [], []
    for name in names:
        (tm, tn, tk), (cm, cn), schedule = CONFIGS[name]
        for direction in ("FORWARD", "BACKWARD"):  # one file each, so that all compile in parallel
            path = os.path.join(folder, f"{name}_{direction.lower()}.cu")
            with open(path, "w") as f:
                f.write(f'#include "gelu_gemm_sm90.cuh"\nusing namespace cute;\n'
                        f"using ConfigTile = Shape<_{tm}, _{tn}, _{tk}>;\nusing ConfigCluster = Shape<_{cm}, _{cn}, _1>;\n"
                        f"GELU_GEMM_SM90_{direction}({name}, ConfigTile, ConfigCluster, gelu_gemm::{schedule})\n")
            sources.append(path)
        decls.append(f"const char* {name}_forward(const void*, const void*, const void*, void*, void*, int, int, int, "
                     f"int, void*, cudaStream_t);\nconst char* {name}_backward(const void*, const void*, const void*, "
                     f"void*, int, int, int, int, void*, cudaStream_t);")
        defs.append(f'  m.def("{name}_forward", [](at::Tensor x, at::Tensor w, at::Tensor b) {{\n'
                    f"    auto out = at::empty({{x.size(0), w.size(0)}}, x.options()), pre = at::empty_like(out);\n"
                    f"    check({name}_forward(x.data_ptr(), w.data_ptr(), b.data_ptr(), out.data_ptr(), pre.data_ptr(),"
                    f" x.size(0), w.size(0), x.size(1), sms(), workspace(x), stream()));\n"
                    f"    return std::vector<at::Tensor>{{out, pre}}; }});\n"
                    f'  m.def("{name}_backward", [](at::Tensor g, at::Tensor w, at::Tensor pre) {{\n'
                    f"    auto out = at::empty_like(pre);\n"
                    f"    check({name}_backward(g.data_ptr(), w.data_ptr(), pre.data_ptr(), out.data_ptr(),"
                    f" g.size(0), w.size(1), g.size(1), sms(), workspace(g), stream()));\n"
                    f"    return out; }});\n")
    binding = os.path.join(folder, "binding.cpp")
    with open(binding, "w") as f:
        f.write("#include <torch/extension.h>\n#include <ATen/cuda/CUDAContext.h>\n" + "\n".join(decls) + "\n"
                "static void check(const char* err) { TORCH_CHECK(err == nullptr, err); }\n"
                "static int sms() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }\n"
                "static cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }\n"
                "static void* workspace(const at::Tensor& like) {\n"
                "  static at::Tensor ws = at::empty({1 << 20}, like.options().dtype(at::kByte)); return ws.data_ptr(); }\n"
                "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\n" + "".join(defs) + "}\n")
    flags = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-DNDEBUG", "-gencode=arch=compute_90a,code=sm_90a"]
    return load(name="gelu_gemm_sm90_bench", sources=[binding] + sources, build_directory=folder,
                extra_include_paths=[csrc] + cutlass_include_dirs(), extra_cuda_cflags=flags, verbose=False)


def main():
    names = sys.argv[1:] or list(CONFIGS)
    if unknown := [name for name in names if name not in CONFIGS]:
        sys.exit(f"bench/gelu_gemm_sm90.py: unknown configuration {', '.join(unknown)}; expected any of {', '.join(CONFIGS)}")
    ext = build(names)
    lt = gelu_fusion.extension()
    print_header()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape, M, C, (x, w_fc, b_fc, w_proj, grad_y), (out_ref, pre_ref, dpre_ref) in shape_cases(gen):
        flops = 2 * M * C * 4 * C
        fwd_check = lambda res: [(res[0], out_ref), (res[1], pre_ref)]  # (gelu output, its input)
        bwd_check = lambda res: [(res, dpre_ref)]
        print_row(shape, "fwd cuBLAS x @ w.T (plain)", lambda: x @ w_fc.T, None, flops)
        print_row(shape, "fwd unfused", lambda: unfused_forward(x, w_fc, b_fc), fwd_check, flops)
        print_row(shape, "fwd cuBLASLt GELU_AUX_BIAS", lambda: lt.linear_gelu(x, w_fc, b_fc), fwd_check, flops)
        for name in names:
            print_row(shape, f"fwd {name}", lambda: getattr(ext, f"{name}_forward")(x, w_fc, b_fc), fwd_check, flops)
        print_row(shape, "bwd cuBLAS grad @ w (plain)", lambda: grad_y @ w_proj, None, flops)
        print_row(shape, "bwd unfused", lambda: unfused_dgelu(grad_y, w_proj, pre_ref), bwd_check, flops)
        print_row(shape, "bwd cuBLASLt DGELU", lambda: lt.matmul_gelu_backward(grad_y, w_proj, pre_ref, False)[0],
                  bwd_check, flops)
        for name in names:
            print_row(shape, f"bwd {name}", lambda: getattr(ext, f"{name}_backward")(grad_y, w_proj, pre_ref),
                      bwd_check, flops)


if __name__ == "__main__":
    main()
