"""The loss's softmax gradient in one pass over memory (ds_train/csrc/softmax_grad.cuh: a block per row, the row in
shared memory, two blocks an SM; bench/csrc/softmax_grad_one_exp.cuh: the same with one exponential a logit instead
of two; and bench/csrc/softmax_grad_registers.cuh: the row in registers) against the
Triton kernel (two reads and one write of the chunk) and a plain copy of the chunk (one read and one write, the
floor), on one chunk of the head's logits (4096 x 50304 bf16 by default), in several block shapes, and the kernel
the trainer runs (ds_train/loss.py's GPU chunk function). Prints ms per call, GB/s counting one read and one write,
and each one's largest loss and gradient difference from the Triton kernel's.
    python bench/softmax_onepass.py [--rows 4096]   (a CUDA GPU and nvcc; builds the variants first, about a minute)
"""

import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train import loss  # noqa: E402
from softmax_variants import time_ms  # noqa: E402  (bench/, the script's own folder)

V, WIDTH = 50257, 50304
# name: the kernel's template arguments: in registers (threads a row, 16-byte vectors a thread, blocks an SM at
# least, streaming cache hints), in shared memory (threads a row, loads in flight a thread, blocks an SM at least;
# the trainer's is 512, 4, 2), and in shared memory with one exponential a logit (the same arguments)
VARIANTS = {
    "registers, 384 threads x 17": ("registers", 384, 17, 1, "false"),
    "registers, 512 threads x 13": ("registers", 512, 13, 1, "false"),
    "registers, 512 threads x 13, 2/SM": ("registers", 512, 13, 2, "false"),
    "registers, 768 threads x 9": ("registers", 768, 9, 1, "false"),
    "registers, 1024 threads x 7": ("registers", 1024, 7, 1, "false"),
    "registers, 1024 threads x 7, streaming": ("registers", 1024, 7, 1, "true"),
    "shared, 256 threads, 8 loads, 2/SM": ("shared", 256, 8, 2),
    "shared, 512 threads, 4 loads, 2/SM": ("shared", 512, 4, 2),
    "shared, 512 threads, 8 loads, 2/SM": ("shared", 512, 8, 2),
    "shared, 1024 threads, 4 loads, 2/SM": ("shared", 1024, 4, 2),
    "one exp, 512 threads, 4 loads, 2/SM": ("one_exp", 512, 4, 2),
    "one exp, 256 threads, 8 loads, 2/SM": ("one_exp", 256, 8, 2),
    "one exp, 1024 threads, 4 loads, 2/SM": ("one_exp", 1024, 4, 2),
}


def build():
    from torch.utils.cpp_extension import load_inline
    bench = os.path.dirname(os.path.abspath(__file__))
    include_dirs = [os.path.join(bench, "csrc"), os.path.join(os.path.dirname(bench), "ds_train", "csrc")]
    names, decls, defs = [], [], []
    for i, (where, threads, *args) in enumerate(VARIANTS.values()):
        name = f"variant_{i}"
        names.append(name)
        signature = (f"void {name}(at::Tensor logits, at::Tensor targets, at::Tensor losses, int64_t vocab, "
                     "double scale, bool write_grad)")
        decls.append(signature + ";")
        template_args = ", ".join(map(str, (threads, *args)))
        if where == "registers":  # the row's vectors must fit the threads' registers
            kernel, smem, limit = f"softmax_grad_registers_kernel<{template_args}>", "0", threads * args[0]
        else:
            kernel = f"softmax_grad_{'one_exp_' if where == 'one_exp' else ''}kernel<{template_args}>"
            smem, limit = "smem", 1 << 30
        defs.append(
            signature + " {\n"
            "  TORCH_CHECK(logits.is_cuda() && logits.scalar_type() == at::kBFloat16 && logits.stride(1) == 1 &&\n"
            "              logits.stride(0) % 8 == 0 && logits.size(1) % 8 == 0 &&\n"
            f"              logits.size(1) / 8 <= {limit} &&\n"
            "              reinterpret_cast<uintptr_t>(logits.data_ptr()) % 16 == 0, \"unsupported logits\");\n"
            "  const int smem = logits.size(1) * 2;  (void)smem;\n"
            f"  auto kernel = softmax_grad::{kernel};\n"
            + ("  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));\n"
               if where != "registers" else "") +
            f"  kernel<<<logits.size(0), {threads}, {smem}, at::cuda::getCurrentCUDAStream()>>>(\n"
            "      reinterpret_cast<__nv_bfloat16*>(logits.data_ptr()), targets.data_ptr<int64_t>(),\n"
            "      losses.data_ptr<float>(), logits.stride(0), vocab, logits.size(1), scale, write_grad);\n"
            "  C10_CUDA_KERNEL_LAUNCH_CHECK();\n"
            "}\n")
    cuda_source = ("#include <torch/extension.h>\n#include <ATen/cuda/CUDAContext.h>\n"
                   "#include <c10/cuda/CUDAException.h>\n#include \"softmax_grad_registers.cuh\"\n"
                   "#include \"softmax_grad_one_exp.cuh\"\n" + "".join(defs))
    return load_inline(name="softmax_onepass_bench", cpp_sources="\n".join(decls), cuda_sources=cuda_source,
                       functions=names, extra_include_paths=include_dirs, extra_cuda_cflags=["-O3", "-Xptxas=-v"],
                       build_directory=tempfile.mkdtemp(prefix="softmax_onepass_"), verbose=True), names


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=4096)
    rows = p.parse_args().rows
    ext, names = build()  # ptxas's register and spill counts per variant are in the build's output above
    gen = torch.Generator(device="cuda").manual_seed(0)
    base = (torch.randn(rows, WIDTH, device="cuda", generator=gen) * 3).bfloat16()
    targets = torch.randint(0, V, (rows,), device="cuda", generator=gen)
    scale = 1.0 / 65536
    make = base.clone

    def shipped(x):
        return loss._triton_chunk(x, targets, V, scale, write_grad=True)

    def variant(name):
        def run(x):
            out = torch.empty(rows, dtype=torch.float32, device="cuda")
            getattr(ext, name)(x, targets, out, V, scale, True)
            return out
        return run

    ref_x = make()
    ref_loss = shipped(ref_x)
    gbytes = base.numel() * 2 / 1e9
    copy_dst = torch.empty_like(base)
    print(f"chunk {rows} x {WIDTH} bf16 ({gbytes:.2f} GB); ms per call, GB/s counting one read and one write")
    print(f"{'variant':<36} {'ms':>7} {'GB/s':>7} {'max loss diff':>13} {'max grad diff':>13}   (from Triton's; "
          "then from ds_train's kernel)")
    ms = time_ms(lambda x: copy_dst.copy_(x), make)
    print(f"{'copy (the floor)':<36} {ms:>7.3f} {2 * gbytes / ms * 1e3:>7.0f}")
    print(f"{'Triton (two reads)':<36} {time_ms(shipped, make):>7.3f}")

    def trainer(x):
        return loss._gpu_chunk(x, targets, V, scale, write_grad=True)

    x = make()
    out = trainer(x)
    trainer_loss, trainer_x = out, x
    ms = time_ms(trainer, make)
    print(f"{'ds_train (' + loss.gpu_kernel_name(x) + ')':<36} {ms:>7.3f} {2 * gbytes / ms * 1e3:>7.0f} "
          f"{float((out - ref_loss).abs().max()):>13.2e} {float((x.float() - ref_x.float()).abs().max()):>13.2e}")
    for label, name in zip(VARIANTS, names):
        fn = variant(name)
        ms = time_ms(fn, make)
        x = make()
        out = fn(x)
        loss_diff = float((out - ref_loss).abs().max())
        grad_diff = float((x.float() - ref_x.float()).abs().max())
        loss_tr = float((out - trainer_loss).abs().max())
        grad_tr = float((x.float() - trainer_x.float()).abs().max())
        print(f"{label:<36} {ms:>7.3f} {2 * gbytes / ms * 1e3:>7.0f} {loss_diff:>13.2e} {grad_diff:>13.2e} "
              f"{loss_tr:>13.2e} {grad_tr:>13.2e}")
    no_grad = torch.empty(rows, dtype=torch.float32, device="cuda")
    for label, name in zip(VARIANTS, names):
        x = make()
        getattr(ext, name)(x, targets, no_grad, V, scale, False)
        print(f"{label}, loss only: max loss diff {float((no_grad - ref_loss).abs().max()):.2e}, logits untouched: "
              f"{bool(torch.equal(x, base))}")


if __name__ == "__main__":
    main()
