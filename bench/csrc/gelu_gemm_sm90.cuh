// The MLP's GELU matmuls as CUTLASS GEMMs for Hopper (sm_90a), GELU in the epilogue: TMA loads, warp-specialized
// persistent kernels, and an epilogue that stores through TMA (with the ping-pong schedule, while the other
// consumer warpgroup's mainloop runs). bench/gelu_gemm_sm90.py builds each configuration and times it against
// ds_train's cuBLASLt epilogues (ds_train/csrc/gelu_matmul.cpp), which do the same arithmetic.
//   forward:  out = gelu(x @ w.T + b), pre = x @ w.T + b        x (M, K), w (N, K), b (N): all row-major bf16
//   backward: grad_pre = (grad_out @ w) * gelu'(pre)             grad_out (M, K), w (K, N), pre (M, N)
// GELU is the tanh approximation (GPT-2's), computed in fp32 on the fp32 accumulator; pre is stored in bf16, as
// cuBLASLt's aux output is.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/thread/activation.h>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/util/packed_stride.hpp>

namespace gelu_gemm {

using namespace cute;
using BF16 = cutlass::bfloat16_t;
using RowMajor = cutlass::layout::RowMajor;
using ColumnMajor = cutlass::layout::ColumnMajor;
constexpr int kAlign = 8;  // 16 bytes of bf16: what TMA needs of every row
constexpr size_t kWorkspaceBytes = 1 << 20;  // the persistent tile scheduler's; no split-K here

using Pingpong = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
using Cooperative = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
template <class Schedule>
using EpilogueFor = std::conditional_t<std::is_same_v<Schedule, Pingpong>, cutlass::epilogue::TmaWarpSpecialized,
                                       cutlass::epilogue::TmaWarpSpecializedCooperative>;

// A GEMM (M, N, K) with A row-major (M, K), B of layout LayoutB as a (K, N) operand, D row-major (M, N).
template <class LayoutB, class Fusion, class Tile, class Cluster, class Schedule>
struct Gemm {
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, RowMajor, kAlign, BF16, RowMajor, kAlign,
      EpilogueFor<Schedule>, Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, BF16, RowMajor, kAlign, BF16, LayoutB, kAlign, float, Tile,
      Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      Schedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Adapter = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

using ForwardFusion = cutlass::epilogue::fusion::LinCombPerColBiasEltActAux<
    RowMajor, cutlass::epilogue::thread::GELU_taylor, BF16, float, BF16, BF16>;
using BackwardFusion =
    cutlass::epilogue::fusion::LinCombDeEltAct<RowMajor, cutlass::epilogue::thread::dGELU, BF16, float, BF16>;

// x (M, K) and w (N, K) row-major: w is B as a column-major (K, N) operand
template <class Tile, class Cluster, class Schedule>
using Forward = Gemm<ColumnMajor, ForwardFusion, Tile, Cluster, Schedule>;
// grad_out (M, K) and w (K, N) row-major
template <class Tile, class Cluster, class Schedule>
using Backward = Gemm<RowMajor, BackwardFusion, Tile, Cluster, Schedule>;

// Runs G on (M, N, K) with its epilogue's arguments set by `set_fusion`; returns an error message or nullptr.
// `workspace` holds kWorkspaceBytes bytes (a configuration that needs more is refused).
template <class G, class SetFusion>
const char* run(const BF16* a, const BF16* b, BF16* d, int M, int N, int K, int sm_count, void* workspace,
                cudaStream_t stream, SetFusion set_fusion) {
  using Adapter = typename G::Adapter;
  using Kernel = typename G::Kernel;
  typename Adapter::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {M, N, K, 1},
      {a, cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, make_shape(M, K, 1)), b,
       cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, make_shape(N, K, 1))},
      {{}, nullptr, cutlass::make_cute_packed_stride(typename Kernel::StrideC{}, make_shape(M, N, 1)), d,
       cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, make_shape(M, N, 1))}};
  args.hw_info.sm_count = sm_count;
  auto& fusion = args.epilogue.thread;
  fusion.alpha = 1.0f;
  fusion.beta = 0.0f;
  fusion.dAux = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, make_shape(M, N, 1));
  set_fusion(fusion);
  Adapter gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return "CUTLASS cannot run this GELU GEMM's shape";
  if (Adapter::get_workspace_size(args) > kWorkspaceBytes) return "the GELU GEMM needs a larger workspace";
  if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return "CUTLASS initialize failed";
  if (gemm.run(stream) != cutlass::Status::kSuccess) return "CUTLASS launch failed";
  return nullptr;
}

}  // namespace gelu_gemm

// One configuration's entry points, NAME_forward and NAME_backward; bench/gelu_gemm_sm90.py puts each in a file of
// its own, so that all compile in parallel.
#define GELU_GEMM_SM90_FORWARD(NAME, TILE, CLUSTER, SCHEDULE)                                                  \
  const char* NAME##_forward(const void* x, const void* w, const void* bias, void* out, void* pre, int M, int N, \
                             int K, int sm_count, void* workspace, cudaStream_t stream) {                     \
    return gelu_gemm::run<gelu_gemm::Forward<TILE, CLUSTER, SCHEDULE>>(                                        \
        static_cast<const gelu_gemm::BF16*>(x), static_cast<const gelu_gemm::BF16*>(w),                        \
        static_cast<gelu_gemm::BF16*>(out), M, N, K, sm_count, workspace, stream, [&](auto& fusion) {          \
          fusion.bias_ptr = static_cast<const gelu_gemm::BF16*>(bias);                                         \
          fusion.aux_ptr = static_cast<gelu_gemm::BF16*>(pre);                                                 \
        });                                                                                                    \
  }
#define GELU_GEMM_SM90_BACKWARD(NAME, TILE, CLUSTER, SCHEDULE)                                                 \
  const char* NAME##_backward(const void* grad_out, const void* w, const void* pre, void* grad_pre, int M,     \
                              int N, int K, int sm_count, void* workspace, cudaStream_t stream) {              \
    return gelu_gemm::run<gelu_gemm::Backward<TILE, CLUSTER, SCHEDULE>>(                                       \
        static_cast<const gelu_gemm::BF16*>(grad_out), static_cast<const gelu_gemm::BF16*>(w),                 \
        static_cast<gelu_gemm::BF16*>(grad_pre), M, N, K, sm_count, workspace, stream,                         \
        [&](auto& fusion) { fusion.aux_ptr = static_cast<const gelu_gemm::BF16*>(pre); });                     \
  }
