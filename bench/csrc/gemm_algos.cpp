// Every algorithm cuBLASLt's heuristic offers for one matmul, each launchable by its index, for
// bench/gemm_algos.py. The trainer's matmuls take the heuristic's first algorithm (PyTorch's calls and
// ds_train/csrc/gelu_matmul.cpp alike); this asks for the others, so that each can be timed as the trainer
// would run it. Tensors are row-major as in gelu_matmul.cpp, so every problem here is the transposed,
// column-major one.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <cublasLt.h>

#include <vector>

#define CUBLASLT_CHECK(expr)                                                                           \
  do {                                                                                                 \
    cublasStatus_t status_ = (expr);                                                                   \
    TORCH_CHECK(status_ == CUBLAS_STATUS_SUCCESS, #expr " failed: ", cublasLtGetStatusString(status_)); \
  } while (0)

namespace {

constexpr size_t kWorkspaceBytes = 32 << 20;  // as gelu_matmul.cpp allows

struct Problem {
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t layout_a, layout_b, layout_d;
  std::vector<cublasLtMatmulHeuristicResult_t> algos;
  at::Tensor A, B, D, bias, aux, workspace;  // held so that their memory outlives the problem
  float beta;
};
std::vector<Problem> problems;

}  // namespace

// D (m x n, column-major; fp32 if D is, then D += A @ B with beta = 1) = op(A) @ op(B) with epilogue
// (cublasLtEpilogue_t's value), bias (m entries) and aux (m x n, GELU's input) where the epilogue takes them.
// -> the problem's index; its algorithms, the heuristic's first `count` or fewer, are kept with it.
int64_t setup(const at::Tensor& A, const at::Tensor& B, const at::Tensor& D, bool transa, bool transb, int64_t m,
              int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldd, int64_t epilogue,
              const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& aux, int64_t count) {
  Problem p;
  p.A = A, p.B = B, p.D = D;
  const bool fp32_out = D.scalar_type() == at::kFloat;
  p.beta = fp32_out ? 1.0f : 0.0f;
  CUBLASLT_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t op_a = transa ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = transb ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  auto epi = static_cast<cublasLtEpilogue_t>(epilogue);
  CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (bias) {
    p.bias = *bias;
    void* ptr = p.bias.data_ptr();
    cudaDataType_t bias_type = CUDA_R_16BF;
    CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
    CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ptr, sizeof(ptr)));
  }
  if (aux) {
    p.aux = *aux;
    void* ptr = p.aux.data_ptr();
    int64_t ld_aux = m;
    CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &ptr, sizeof(ptr)));
    CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld_aux, sizeof(ld_aux)));
  }
  CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&p.layout_a, CUDA_R_16BF, transa ? k : m, transa ? m : k, lda));
  CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&p.layout_b, CUDA_R_16BF, transb ? n : k, transb ? k : n, ldb));
  CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&p.layout_d, fp32_out ? CUDA_R_32F : CUDA_R_16BF, m, n, ldd));
  cublasLtMatmulPreference_t preference;
  CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  size_t workspace_bytes = kWorkspaceBytes;
  CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &workspace_bytes, sizeof(workspace_bytes)));
  p.algos.resize(count);
  int found = 0;
  CUBLASLT_CHECK(cublasLtMatmulAlgoGetHeuristic(at::cuda::getCurrentCUDABlasLtHandle(), p.desc, p.layout_a,
                                                p.layout_b, p.layout_d, p.layout_d, preference, count,
                                                p.algos.data(), &found));
  cublasLtMatmulPreferenceDestroy(preference);
  p.algos.resize(found);
  p.workspace = at::empty({static_cast<int64_t>(kWorkspaceBytes)}, A.options().dtype(at::kByte));
  problems.push_back(std::move(p));
  return static_cast<int64_t>(problems.size()) - 1;
}

int64_t algo_count(int64_t problem) { return static_cast<int64_t>(problems.at(problem).algos.size()); }

// Queue `calls` launches of the problem's algorithm `algo` on the current stream.
void launch(int64_t problem, int64_t algo, int64_t calls) {
  Problem& p = problems.at(problem);
  const cublasLtMatmulHeuristicResult_t& choice = p.algos.at(algo);
  const float alpha = 1.0f;
  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  for (int64_t i = 0; i < calls; ++i) {
    CUBLASLT_CHECK(cublasLtMatmul(handle, p.desc, &alpha, p.A.data_ptr(), p.layout_a, p.B.data_ptr(), p.layout_b,
                                  &p.beta, p.D.data_ptr(), p.layout_d, p.D.data_ptr(), p.layout_d, &choice.algo,
                                  p.workspace.data_ptr(), kWorkspaceBytes, at::cuda::getCurrentCUDAStream()));
  }
}

// The algorithm's configuration as cuBLASLt names it: tile, stages, split-K and its reduction, CTA swizzling, custom
// option, cluster shape (ids of its enums).
std::string describe(int64_t problem, int64_t algo) {
  const cublasLtMatmulAlgo_t& a = problems.at(problem).algos.at(algo).algo;
  auto get = [&](cublasLtMatmulAlgoConfigAttributes_t attr) {  // the attributes are 2 or 4 bytes wide
    uint64_t value = 0;
    size_t size = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&a, attr, nullptr, 0, &size);
    if (size == 0 || size > sizeof(value) ||
        cublasLtMatmulAlgoConfigGetAttribute(&a, attr, &value, size, &size) != CUBLAS_STATUS_SUCCESS)
      return std::string("?");
    return std::to_string(value);
  };
  return "id=" + get(CUBLASLT_ALGO_CONFIG_ID) + " tile=" + get(CUBLASLT_ALGO_CONFIG_TILE_ID) +
         " stages=" + get(CUBLASLT_ALGO_CONFIG_STAGES_ID) + " splitk=" + get(CUBLASLT_ALGO_CONFIG_SPLITK_NUM) +
         " reduction=" + get(CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME) + " swizzle=" + get(CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING) +
         " custom=" + get(CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION) + " cluster=" + get(CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID);
}

void clear() { problems.clear(); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("setup", &setup, "a matmul problem and its heuristic's algorithms -> its index");
  m.def("algo_count", &algo_count, "how many algorithms the heuristic offered for a problem");
  m.def("launch", &launch, "queue calls of one algorithm of a problem");
  m.def("describe", &describe, "an algorithm's configuration ids");
  m.def("clear", &clear, "forget every problem (their descriptors are not destroyed: a benchmark's few)");
}
