// A variant of ds_train/csrc/softmax_grad.cuh for bench/softmax_onepass.py, not used by the trainer: the row held
// in the threads' registers (packed two bf16 to a register) instead of shared memory. It needs a whole SM's
// registers for one row, so rows do not overlap on an SM, and it ran slower (docs/performance.md).
#pragma once
#include "softmax_grad.cuh"

namespace softmax_grad {

// Tells the compiler that `data` may have changed, meant to make each pass convert the bf16 values to float again
// instead of keeping a float copy of the row live across the block reductions (ptxas used about as many registers
// either way, and spilled at 768 and 1024 threads: the build output of bench/softmax_onepass.py).
template <int VECS>
__device__ __forceinline__ void reload_barrier(uint4 (&data)[VECS]) {
#pragma unroll
  for (int i = 0; i < VECS; ++i)
    asm volatile("" : "+r"(data[i].x), "+r"(data[i].y), "+r"(data[i].z), "+r"(data[i].w));
}

// THREADS threads a row, each holding VECS 16-byte vectors of it (8 bf16 each): the row's width / 8 vectors must
// not exceed THREADS * VECS. STREAMING: load and store with the evict-first cache hint (the row is touched once).
template <int THREADS, int VECS, int MIN_BLOCKS, bool STREAMING>
__global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    softmax_grad_registers_kernel(__nv_bfloat16* logits, const int64_t* targets, float* losses, int64_t row_stride,
                                  int vocab, int width, float scale, bool write_grad) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  uint4* row_vecs = reinterpret_cast<uint4*>(logits + row * row_stride);
  const int vecs = width / 8;
  uint4 data[VECS];
#pragma unroll
  for (int i = 0; i < VECS; ++i) {
    const int v = threadIdx.x + i * THREADS;
    if (v < vecs) data[i] = STREAMING ? __ldcs(row_vecs + v) : row_vecs[v];
  }
  float row_max = -CUDART_INF_F;
#pragma unroll
  for (int i = 0; i < VECS; ++i)
    for_each_in_vocab(data[i], (threadIdx.x + i * THREADS) * 8, vocab, [&](float z) { row_max = fmaxf(row_max, z); });
  row_max = block_reduce<THREADS, true>(row_max, scratch);
  reload_barrier(data);
  const float log2e = 1.4426950408889634f, max_log2 = row_max * log2e;
  float row_sum = 0.f;
#pragma unroll
  for (int i = 0; i < VECS; ++i)
    for_each_in_vocab(data[i], (threadIdx.x + i * THREADS) * 8, vocab,
                      [&](float z) { row_sum += exp2_approx(fmaf(z, log2e, -max_log2)); });
  row_sum = block_reduce<THREADS, false>(row_sum, scratch);
  reload_barrier(data);
  const float lse = row_max + logf(row_sum), lse_log2 = lse * log2e;
  const int64_t target = targets[row];
#pragma unroll
  for (int i = 0; i < VECS; ++i) {
    const int v = threadIdx.x + i * THREADS;
    if (v >= vecs) continue;
    const int col0 = v * 8;
    __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&data[i]);
    if (target >= col0 && target < col0 + 8) {  // the one thread holding the target's logit writes the loss
      float target_logit = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {  // static indices only, so that data[] stays in registers
        const float2 z = __bfloat1622float2(pairs[j]);
        if (col0 + 2 * j == target) target_logit = z.x;
        if (col0 + 2 * j + 1 == target) target_logit = z.y;
      }
      losses[row] = lse - target_logit;
    }
    if (!write_grad) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 z = __bfloat1622float2(pairs[j]);
      const int c = col0 + 2 * j;
      float gx = c < vocab ? exp2_approx(fmaf(z.x, log2e, -lse_log2)) : 0.f;
      float gy = c + 1 < vocab ? exp2_approx(fmaf(z.y, log2e, -lse_log2)) : 0.f;
      gx = (c == target ? gx - 1.f : gx) * scale;
      gy = (c + 1 == target ? gy - 1.f : gy) * scale;
      pairs[j] = __floats2bfloat162_rn(gx, gy);
    }
    if (STREAMING) __stcs(row_vecs + v, data[i]); else row_vecs[v] = data[i];
  }
}

}  // namespace softmax_grad
