// The loss's softmax gradient over one chunk of bf16 logits (ds_train/loss.py) in one pass over memory: each block
// takes one row, copies it into shared memory (50304 bf16 = 98 KiB, so two blocks share an SM and one's
// exponentials run while the other's row moves) taking its max on the way, then its sum of exponentials from
// there, and writes scale * (softmax - onehot) over the row in place. The logits are read once and written once,
// where the Triton kernel in ds_train/loss.py reads them twice. Columns at or past `vocab` (the head's padding)
// are out of the softmax and get 0. bench/softmax_onepass.py times it against that kernel, a plain copy of the
// chunk (the floor) and variants.
#pragma once
#include <cuda_bf16.h>
#include <math_constants.h>
#include <stdint.h>

namespace softmax_grad {

// 2^x as Triton's exp lowers it (ex2.approx.ftz after a multiply by log2(e))
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// f(z) for each of the 8 bf16 values of a 16-byte vector whose first column is col0 that lies inside the
// vocabulary (columns at or past `vocab` are the head's padding, out of the softmax), as a float. The vector is
// taken by value: a reference into shared memory let nvcc split the one 16-byte load into narrower ones.
template <class F>
__device__ __forceinline__ void for_each_in_vocab(uint4 vec, int col0, int vocab, F f) {
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&vec);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 z = __bfloat1622float2(pairs[j]);
    if (col0 + 2 * j < vocab) f(z.x);
    if (col0 + 2 * j + 1 < vocab) f(z.y);
  }
}

// the block-wide max (IS_MAX) or sum of v, in every thread; `scratch` holds one float per warp
template <int THREADS, bool IS_MAX>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
  static_assert(THREADS % 32 == 0 && THREADS <= 1024, "whole warps, at most 32");
  for (int offset = 16; offset > 0; offset >>= 1) {
    float other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = IS_MAX ? fmaxf(v, other) : v + other;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < THREADS / 32 ? scratch[lane] : (IS_MAX ? -CUDART_INF_F : 0.f);
  for (int offset = 16; offset > 0; offset >>= 1) {
    float other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = IS_MAX ? fmaxf(v, other) : v + other;
  }
  __syncthreads();  // every warp has read scratch before the next reduction writes it
  return v;
}

// the first pass of a row: each thread copies its 16-byte vectors of the row (of `vecs`) into row_smem, UNROLL
// loads in flight, taking their max on the way (over the columns inside the vocabulary); the row's max, in every
// thread
template <int THREADS, int UNROLL>
__device__ __forceinline__ float copy_row_taking_max(const uint4* row_vecs, uint4* row_smem, int vecs, int vocab,
                                                     float* scratch) {
  float row_max = -CUDART_INF_F;
  for (int base = threadIdx.x; base < vecs; base += THREADS * UNROLL) {
    uint4 loaded[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int v = base + u * THREADS;
      if (v < vecs) loaded[u] = __ldcs(row_vecs + v);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int v = base + u * THREADS;
      if (v >= vecs) continue;
      row_smem[v] = loaded[u];
      for_each_in_vocab(loaded[u], v * 8, vocab, [&](float z) { row_max = fmaxf(row_max, z); });
    }
  }
  return block_reduce<THREADS, true>(row_max, scratch);
}

// THREADS threads a row, width * 2 bytes of dynamic shared memory a block: each thread copies its 16-byte vectors
// of the row in (UNROLL loads in flight) and takes their max on the way, then reads them back for the sum and the
// gradient. Each thread reads back only what it wrote itself.
template <int THREADS, int UNROLL, int MIN_BLOCKS>
__global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
    softmax_grad_kernel(__nv_bfloat16* logits, const int64_t* targets, float* losses, int64_t row_stride, int vocab,
                        int width, float scale, bool write_grad) {
  extern __shared__ uint4 row_smem[];
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  uint4* row_vecs = reinterpret_cast<uint4*>(logits + row * row_stride);
  const int vecs = width / 8;
  const float row_max = copy_row_taking_max<THREADS, UNROLL>(row_vecs, row_smem, vecs, vocab, scratch);
  const float log2e = 1.4426950408889634f, max_log2 = row_max * log2e;
  float row_sum = 0.f;
  for (int v = threadIdx.x; v < vecs; v += THREADS)
    for_each_in_vocab(row_smem[v], v * 8, vocab, [&](float z) { row_sum += exp2_approx(fmaf(z, log2e, -max_log2)); });
  row_sum = block_reduce<THREADS, false>(row_sum, scratch);  // its barriers also make every row_smem write visible
  const float lse = row_max + logf(row_sum), lse_log2 = lse * log2e;
  const int64_t target = targets[row];
  if (threadIdx.x == 0)  // a target outside the vocabulary (bad data) gets a NaN loss, not a read past the row
    losses[row] = target >= 0 && target < vocab
                      ? lse - __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(row_smem)[target])
                      : CUDART_NAN_F;
  if (!write_grad) return;
  for (int v = threadIdx.x; v < vecs; v += THREADS) {
    uint4 vec = row_smem[v];
    __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&vec);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 z = __bfloat1622float2(pairs[j]);
      const int c = v * 8 + 2 * j;
      float gx = c < vocab ? exp2_approx(fmaf(z.x, log2e, -lse_log2)) : 0.f;
      float gy = c + 1 < vocab ? exp2_approx(fmaf(z.y, log2e, -lse_log2)) : 0.f;
      gx = (c == target ? gx - 1.f : gx) * scale;
      gy = (c + 1 == target ? gy - 1.f : gy) * scale;
      pairs[j] = __floats2bfloat162_rn(gx, gy);
    }
    __stcs(row_vecs + v, vec);
  }
}

}  // namespace softmax_grad
