// The Python binding of softmax_grad.cuh's kernel (ds_train/loss.py builds it with torch's C++ extension tools on
// first use): 512 threads a row, 4 loads in flight a thread, two blocks an SM, the fastest of the shapes
// bench/softmax_onepass.py tried on an H200.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <torch/extension.h>

#include "softmax_grad.cuh"

namespace {

constexpr int kThreads = 512, kLoadsInFlight = 4, kBlocksPerSM = 2;

// Each row's loss into `losses` (float32); with write_grad, scale * (softmax - onehot) over `logits` in place.
// logits: (rows, width) bf16 with unit column stride, rows and base 16-byte aligned; targets: (rows,) int64.
void softmax_grad_(at::Tensor logits, at::Tensor targets, at::Tensor losses, int64_t vocab, double scale,
                   bool write_grad) {
  TORCH_CHECK(logits.is_cuda() && logits.scalar_type() == at::kBFloat16 && logits.dim() == 2 &&
                  logits.stride(1) == 1 && logits.stride(0) % 8 == 0 && logits.size(1) % 8 == 0 &&
                  reinterpret_cast<uintptr_t>(logits.data_ptr()) % 16 == 0,
              "softmax_grad: logits must be 2-D CUDA bf16 with 16-byte aligned rows of a width divisible by 8");
  TORCH_CHECK(targets.is_cuda() && targets.scalar_type() == at::kLong && targets.is_contiguous() &&
                  targets.numel() == logits.size(0),
              "softmax_grad: targets must be contiguous CUDA int64, one per row");
  TORCH_CHECK(losses.is_cuda() && losses.scalar_type() == at::kFloat && losses.is_contiguous() &&
                  losses.numel() == logits.size(0),
              "softmax_grad: losses must be contiguous CUDA float32, one per row");
  TORCH_CHECK(vocab > 0 && vocab <= logits.size(1), "softmax_grad: vocab must be in 1..width");
  if (logits.size(0) == 0) return;
  const int smem_bytes = static_cast<int>(logits.size(1) * 2);
  auto kernel = softmax_grad::softmax_grad_kernel<kThreads, kLoadsInFlight, kBlocksPerSM>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  kernel<<<logits.size(0), kThreads, smem_bytes, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<__nv_bfloat16*>(logits.data_ptr()), targets.data_ptr<int64_t>(), losses.data_ptr<float>(),
      logits.stride(0), static_cast<int>(vocab), static_cast<int>(logits.size(1)), static_cast<float>(scale),
      write_grad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("softmax_grad_", &softmax_grad_, "each row's cross-entropy loss; with write_grad its gradient in place");
}
