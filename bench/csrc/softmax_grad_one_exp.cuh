// A variant of the trainer's one-pass softmax gradient (ds_train/csrc/softmax_grad.cuh) that takes one exponential
// per logit instead of two, for bench/softmax_onepass.py. The trainer's kernel computes exp(z - max) for the row's
// sum and exp(z - lse) again for the gradient; the exponentials run on the SMs' special function units, 16 a clock
// an SM, so a 4096-row chunk of GPT-2's logits asks them for 412M, about 115 us of the kernel's 280 (a plain copy of
// the chunk: 198). Here the sum's pass writes each exp(z - max) back over its logit in shared memory, as bf16, and
// the gradient is that times scale / sum: the loss is the same to the bit (the same sum in the same order), the
// gradient takes one more bf16 rounding (of exp(z - max), before the scale), so it can differ from the trainer's
// by about one bf16 unit. Shared memory and launch as the trainer's kernel (width * 2 bytes a block).
// On an H200 (2026-12-04, bench/results/h200_2026-12-04_lease3/) it ran 3% slower than the trainer's kernel, and
// as the trainer's kernel it left d12's step where it was: the exponentials do not bound the kernel. Not adopted.
#pragma once
#include "softmax_grad.cuh"

namespace softmax_grad {

template <int THREADS, int UNROLL, int MIN_BLOCKS>
__global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    softmax_grad_one_exp_kernel(__nv_bfloat16* logits, const int64_t* targets, float* losses, int64_t row_stride,
                                int vocab, int width, float scale, bool write_grad) {
  extern __shared__ uint4 row_smem[];
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  uint4* row_vecs = reinterpret_cast<uint4*>(logits + row * row_stride);
  const int vecs = width / 8;
  const float row_max = copy_row_taking_max<THREADS, UNROLL>(row_vecs, row_smem, vecs, vocab, scratch);
  const float log2e = 1.4426950408889634f, max_log2 = row_max * log2e;
  const int64_t target = targets[row];
  const bool target_ok = target >= 0 && target < vocab;
  // the thread whose vector holds the target keeps its logit before the exponential replaces it
  float target_logit = 0.f;
  bool owns_target = false;
  float row_sum = 0.f;
  for (int v = threadIdx.x; v < vecs; v += THREADS) {
    uint4 vec = row_smem[v];
    __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&vec);
    if (target_ok && target / 8 == v) {  // from shared memory, before this thread writes its vector back
      target_logit = __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(row_smem)[target]);
      owns_target = true;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 z = __bfloat1622float2(pairs[j]);
      const int c = v * 8 + 2 * j;
      float ex = 0.f, ey = 0.f;  // the head's padding columns: out of the softmax, zero gradient
      if (c < vocab) row_sum += (ex = exp2_approx(fmaf(z.x, log2e, -max_log2)));
      if (c + 1 < vocab) row_sum += (ey = exp2_approx(fmaf(z.y, log2e, -max_log2)));
      pairs[j] = __floats2bfloat162_rn(ex, ey);
    }
    row_smem[v] = vec;  // each thread reads back only what it wrote itself
  }
  row_sum = block_reduce<THREADS, false>(row_sum, scratch);
  const float lse = row_max + logf(row_sum);
  if (owns_target) losses[row] = lse - target_logit;
  if (threadIdx.x == 0 && !target_ok) losses[row] = CUDART_NAN_F;  // bad data: a NaN loss, no read past the row
  if (!write_grad) return;
  const float factor = scale / row_sum;
  for (int v = threadIdx.x; v < vecs; v += THREADS) {
    uint4 vec = row_smem[v];
    __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&vec);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 e = __bfloat1622float2(pairs[j]);
      const int c = v * 8 + 2 * j;
      const float gx = e.x * factor - (c == target ? scale : 0.f);
      const float gy = e.y * factor - (c + 1 == target ? scale : 0.f);
      pairs[j] = __floats2bfloat162_rn(gx, gy);
    }
    __stcs(row_vecs + v, vec);
  }
}

}  // namespace softmax_grad
