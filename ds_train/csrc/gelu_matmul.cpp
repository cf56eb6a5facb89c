// GELU fused into cuBLASLt matmul epilogues (llm.c's -ge), for the MLP of each block. PyTorch's own matmuls
// offer a bias or a bias+GELU epilogue but not the two this needs: the forward GELU that also writes its
// input (the "aux" output, kept for backward), and the backward matmul that multiplies its result by GELU's
// derivative at that input (and can reduce the bias gradient on the way).
// Tensors are row-major bf16; cuBLASLt is column-major, so a row-major (rows, cols) matrix is passed as a
// column-major (cols, rows) one and every product below is written transposed.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <cublasLt.h>

#include <map>
#include <mutex>
#include <tuple>

#define CUBLASLT_CHECK(expr)                                                                           \
  do {                                                                                                 \
    cublasStatus_t status_ = (expr);                                                                   \
    TORCH_CHECK(status_ == CUBLAS_STATUS_SUCCESS, #expr " failed: ", cublasLtGetStatusString(status_)); \
  } while (0)

namespace {

constexpr size_t kWorkspaceBytes = 32 << 20;  // what cuBLASLt may use for split-K and the like

// One algorithm per problem, chosen by cuBLASLt's heuristic on first use: the query costs more CPU time than
// the launch, and each training step repeats the same few shapes. (Timing the heuristic's first 8 candidates
// instead changed d12's step time by nothing measurable on an H100.)
using Key = std::tuple<int64_t, int64_t, int64_t, int, int, int, int64_t, int64_t, int64_t, int64_t, int>;
std::map<Key, cublasLtMatmulAlgo_t> algo_cache;
std::mutex algo_mutex;

// D (m x n, column-major) = op(A) @ op(B) with an epilogue: A is (k x m) if transa else (m x k), B is (n x k)
// if transb else (k x n); bias has m entries (the epilogue's bias or bias gradient); aux is (m x n) with
// leading dimension ld_aux (GELU's input).
void lt_matmul(bool transa, bool transb, int64_t m, int64_t n, int64_t k, const at::Tensor& A, int64_t lda,
               const at::Tensor& B, int64_t ldb, at::Tensor& D, int64_t ldd, cublasLtEpilogue_t epilogue,
               void* bias, void* aux, int64_t ld_aux) {
  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  cublasLtMatmulDesc_t desc;
  CUBLASLT_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t op_a = transa ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = transb ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  if (bias != nullptr) {
    cudaDataType_t bias_type = CUDA_R_16BF;
    CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
    CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  if (aux != nullptr) {
    CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
    CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld_aux, sizeof(ld_aux)));
  }
  cublasLtMatrixLayout_t layout_a, layout_b, layout_d;
  CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&layout_a, CUDA_R_16BF, transa ? k : m, transa ? m : k, lda));
  CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&layout_b, CUDA_R_16BF, transb ? n : k, transb ? k : n, ldb));
  CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&layout_d, CUDA_R_16BF, m, n, ldd));

  Key key{m, n, k, transa, transb, static_cast<int>(epilogue), lda, ldb, ldd, ld_aux, bias != nullptr};
  cublasLtMatmulAlgo_t algo;
  {
    std::lock_guard<std::mutex> lock(algo_mutex);
    auto found = algo_cache.find(key);
    if (found == algo_cache.end()) {
      cublasLtMatmulPreference_t preference;
      CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&preference));
      size_t workspace_bytes = kWorkspaceBytes;
      CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                          &workspace_bytes, sizeof(workspace_bytes)));
      cublasLtMatmulHeuristicResult_t result;
      int found_count = 0;
      CUBLASLT_CHECK(cublasLtMatmulAlgoGetHeuristic(handle, desc, layout_a, layout_b, layout_d, layout_d, preference,
                                                    1, &result, &found_count));
      cublasLtMatmulPreferenceDestroy(preference);
      TORCH_CHECK(found_count > 0, "cuBLASLt has no algorithm for this GELU epilogue (m=", m, " n=", n, " k=", k, ")");
      found = algo_cache.emplace(key, result.algo).first;
    }
    algo = found->second;
  }
  at::Tensor workspace = at::empty({static_cast<int64_t>(kWorkspaceBytes)}, A.options().dtype(at::kByte));
  const float alpha = 1.0f, beta = 0.0f;
  CUBLASLT_CHECK(cublasLtMatmul(handle, desc, &alpha, A.data_ptr(), layout_a, B.data_ptr(), layout_b, &beta,
                                D.data_ptr(), layout_d, D.data_ptr(), layout_d, &algo, workspace.data_ptr(),
                                kWorkspaceBytes, at::cuda::getCurrentCUDAStream()));
  cublasLtMatrixLayoutDestroy(layout_a);
  cublasLtMatrixLayoutDestroy(layout_b);
  cublasLtMatrixLayoutDestroy(layout_d);
  cublasLtMatmulDescDestroy(desc);
}

void check_bf16_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.scalar_type() == at::kBFloat16 && t.dim() == 2 && t.is_contiguous(), name,
              " must be a contiguous 2-D bf16 CUDA tensor");
}

}  // namespace

// (gelu(x @ weight.T + bias), x @ weight.T + bias): x (M, K), weight (N, K), bias (N,)
std::vector<at::Tensor> linear_gelu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  check_bf16_matrix(x, "x");
  check_bf16_matrix(weight, "weight");
  TORCH_CHECK(bias.is_contiguous() && bias.numel() == weight.size(0) && bias.scalar_type() == at::kBFloat16,
              "bias must be a contiguous bf16 vector of weight.size(0) entries");
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  TORCH_CHECK(weight.size(1) == K, "x and weight disagree on the inner dimension");
  at::Tensor out = at::empty({M, N}, x.options()), pre_gelu = at::empty({M, N}, x.options());
  // out.T (N x M) = weight (N x K, stored as K x N column-major, transposed) @ x.T (K x M)
  lt_matmul(true, false, N, M, K, weight, K, x, K, out, N, CUBLASLT_EPILOGUE_GELU_AUX_BIAS, bias.data_ptr(),
            pre_gelu.data_ptr(), N);
  return {out, pre_gelu};
}

// (grad_out @ weight) * gelu'(pre_gelu), and if reduce_bias its column sums (the first linear's bias gradient):
// grad_out (M, N), weight (N, K), pre_gelu (M, K)
std::vector<at::Tensor> matmul_gelu_backward(const at::Tensor& grad_out, const at::Tensor& weight,
                                             const at::Tensor& pre_gelu, bool reduce_bias) {
  check_bf16_matrix(grad_out, "grad_out");
  check_bf16_matrix(weight, "weight");
  check_bf16_matrix(pre_gelu, "pre_gelu");
  const int64_t M = grad_out.size(0), N = grad_out.size(1), K = weight.size(1);
  TORCH_CHECK(weight.size(0) == N && pre_gelu.size(0) == M && pre_gelu.size(1) == K, "shapes disagree");
  at::Tensor grad_pre = at::empty({M, K}, grad_out.options());
  at::Tensor grad_bias = reduce_bias ? at::empty({K}, grad_out.options()) : at::Tensor();
  // grad_pre.T (K x M) = weight.T (K x N: weight stored as K x N column-major) @ grad_out.T (N x M)
  lt_matmul(false, false, K, M, N, weight, K, grad_out, N, grad_pre, K,
            reduce_bias ? CUBLASLT_EPILOGUE_DGELU_BGRAD : CUBLASLT_EPILOGUE_DGELU,
            reduce_bias ? grad_bias.data_ptr() : nullptr, pre_gelu.data_ptr(), K);
  if (reduce_bias) return {grad_pre, grad_bias};
  return {grad_pre};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear_gelu", &linear_gelu, "gelu(x @ weight.T + bias) and its input, by a cuBLASLt epilogue");
  m.def("matmul_gelu_backward", &matmul_gelu_backward,
        "(grad_out @ weight) * gelu'(pre_gelu) [and its column sums], by a cuBLASLt epilogue");
}
