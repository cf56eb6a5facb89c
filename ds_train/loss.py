"""The output head's cross-entropy without the (B*T, vocab) logits: the head matmul, the loss and both
gradients are computed a chunk of rows at a time, in the forward pass.

At B=64, T=1024 the whole logits are 3.3G values: 6.6 GB in bf16, and the fp32 softmax a plain
`F.cross_entropy(logits.float())` builds beside them is twice that again. Here a chunk's logits live only
while its rows are processed, so the head's working memory is one chunk (`CHUNK_ROWS` x 50304 values) plus
the float32 weight gradient, whatever B and T are.
The gradients cost no extra FLOPs: grad_logits = softmax - onehot is known as soon as the loss is, so the
two backward matmuls run right away and backward only scales the stored results (the loss is the last op
of the graph, so its incoming gradient is a scalar).

The padded vocabulary rows of the head (50257..50303) stay in the matmuls, whose tensor-core kernels want
the aligned width, but are masked out of the softmax: they are never scored and get no gradient.

The per-chunk softmax work comes in four forms with one meaning (tests/test_loss.py checks they agree): eager
torch ops (CPU), the same compiled (CPU with --compile 1), and on a GPU a CUDA kernel (ds_train/csrc/softmax_grad.cu,
JIT-built by torch's C++ extension tools on first use) or a Triton kernel, each of which overwrites the chunk's
logits with their gradient. The CUDA kernel reads the logits once where the Triton one reads them twice (d12's
chunk: 0.28 against 0.39 ms on an H200, bench/softmax_onepass.py); it takes bf16 rows that fit twice in an SM's
shared memory (H100 and H200: GPT-2's 50304 columns do; A100: they do not), and the Triton kernel takes the rest.
A bf16 run on a CPU without fast bf16 matmuls (an AVX2 one: bf16 there is for tests) multiplies the head's bf16
values in float32 and rounds the products to bf16, as a GPU's bf16 matmul does (_matmul).
"""

import functools
import os

import torch

CHUNK_ROWS = 4096  # 4096 x 50304 fp32 logits are 0.8 GB


def chunk_loss(logits, targets, vocab_size: int):
    """Per-row cross-entropy (float32) of a chunk of logits (rows, padded vocab) over the first vocab_size columns."""
    z = logits[:, :vocab_size].float()
    return torch.logsumexp(z, dim=1) - z.gather(1, targets[:, None]).squeeze(1)


def chunk_loss_and_grad(logits, targets, vocab_size: int, scale: float):
    """(summed loss, scale * d loss / d logits in the logits' dtype, zero in the padded columns). Written for
    few full-size passes in eager mode too: a log-softmax, then in place its exp and the scaling."""
    z = logits.float()
    if z.shape[1] > vocab_size:  # the padded columns: out of the softmax, so their gradient is 0
        z = z.masked_fill(torch.arange(z.shape[1], device=z.device) >= vocab_size, float("-inf"))
    log_probs = torch.log_softmax(z, dim=1)
    rows = torch.arange(z.shape[0], device=z.device)
    loss_sum = -log_probs[rows, targets].sum()
    grad = log_probs.exp_()
    grad[rows, targets] -= 1.0
    return loss_sum, grad.mul_(scale).to(logits.dtype)


@functools.cache
def cpu_multiplies_bf16() -> bool:
    """Whether torch hands this CPU's bf16 matmuls to oneDNN (AVX-512 or AMX, or Arm's bf16 extension). Elsewhere
    its fallback kernels are slow: on an AVX2 CPU the head's input gradient for the tests' 256 rows took 1.3 s in
    bf16 against 24 ms in float32, one thread each."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private check: a torch without it takes the float32 way below
        return False


def _matmul(a, b):
    """a @ b. Where the CPU has no fast bf16 matmul, bf16 factors are multiplied in float32, where their products
    are exact, and the result is rounded to bf16: what a bf16 matmul that accumulates in float32 gives."""
    if a.dtype == torch.bfloat16 and a.device.type == "cpu" and not cpu_multiplies_bf16():
        return (a.float() @ b.float()).to(a.dtype)
    return a @ b


class LinearCrossEntropy(torch.autograd.Function):
    """mean over rows of cross_entropy(x @ weight.T restricted to vocab_size columns, targets)."""

    @staticmethod
    def forward(ctx, x, weight, targets, vocab_size: int, chunk_rows: int, chunk_fns):
        _, loss_and_grad_fn = chunk_fns
        rows = x.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, rows, chunk_rows):
            x_chunk, t_chunk = x[start:start + chunk_rows], targets[start:start + chunk_rows]
            loss_sum, grad_logits = loss_and_grad_fn(_matmul(x_chunk, weight.t()), t_chunk, vocab_size, 1.0 / rows)
            total += loss_sum
            grad_x[start:start + chunk_rows] = _matmul(grad_logits, weight)
            _accumulate(grad_weight, grad_logits, x_chunk)
        ctx.save_for_backward(grad_x, grad_weight.to(weight.dtype))
        return total / rows

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_weight = ctx.saved_tensors
        return grad_x * grad_loss.to(grad_x.dtype), grad_weight * grad_loss.to(grad_weight.dtype), None, None, None, None


def _accumulate(grad_weight, grad_logits, x_chunk):
    """grad_weight (float32) += grad_logits.T @ x_chunk, without a full-size product in bf16 to cast and add."""
    if x_chunk.is_cuda and x_chunk.dtype != grad_weight.dtype:  # cuBLAS adds bf16 products into float32 in place
        torch.addmm(grad_weight, grad_logits.t(), x_chunk, out_dtype=torch.float32, out=grad_weight)
    else:  # float32 inputs as they are; on a CPU bf16 ones in float32 too, as cuBLAS does (see _matmul)
        grad_weight.addmm_(grad_logits.t().float(), x_chunk.float())


EAGER_CHUNK_FNS = (chunk_loss, chunk_loss_and_grad)


def compiled_chunk_fns():
    """The chunk functions compiled (one fused kernel or two per chunk instead of a dozen full-size passes)."""
    return (torch.compile(chunk_loss, dynamic=False), torch.compile(chunk_loss_and_grad, dynamic=False))


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401  (ships with torch's CUDA builds)
    except ImportError:
        return False
    return torch.cuda.is_available()


_kernel = None


def _softmax_grad_kernel():
    """One program per row: an online max/sum over the real columns, then the row's loss, then (with
    WRITE_GRAD) scale * (softmax - onehot) over the padded width, written over the logits in place. The logits
    are read twice and written once, the least a two-pass softmax can do."""
    global _kernel
    if _kernel is None:
        import triton
        import triton.language as tl

        @triton.jit
        def softmax_grad(logits_ptr, targets_ptr, loss_ptr, row_stride, vocab, width, scale,
                         WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
            row = tl.program_id(0).to(tl.int64)
            ptr = logits_ptr + row * row_stride
            offsets = tl.arange(0, BLOCK)
            running_max = float("-inf")
            running_sum = 0.0
            for start in range(0, vocab, BLOCK):
                cols = start + offsets
                z = tl.load(ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
                new_max = tl.maximum(running_max, tl.max(z, axis=0))
                running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
                running_max = new_max
            lse = running_max + tl.log(running_sum)
            target = tl.load(targets_ptr + row)
            tl.store(loss_ptr + row, lse - tl.load(ptr + target).to(tl.float32))
            if WRITE_GRAD:
                for start in range(0, width, BLOCK):
                    cols = start + offsets
                    z = tl.load(ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
                    grad = tl.exp(z - lse)
                    grad = tl.where(cols == target, grad - 1.0, grad) * scale
                    tl.store(ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=cols < width)

        _kernel = softmax_grad
    return _kernel


def _triton_chunk(logits, targets, vocab_size: int, scale: float, write_grad: bool):
    losses = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    # 8192 columns a step over 16 warps: 0.43 ms per 4096-row chunk of d12 on an H100, against 0.46-0.48 at 4096
    # over 8 warps and 0.28 for a plain copy (bench/softmax_variants.py)
    _softmax_grad_kernel()[(logits.shape[0],)](logits, targets, losses, logits.stride(0), vocab_size, logits.shape[1],
                                               scale, WRITE_GRAD=write_grad, BLOCK=8192, num_warps=16)
    return losses


def _kernel_chunk_fns(chunk):
    """(chunk_loss, chunk_loss_and_grad) done by a kernel function chunk(logits, targets, vocab_size, scale,
    write_grad) -> each row's loss; chunk_loss_and_grad's gradient overwrites `logits` (a fresh matmul output)."""
    def kernel_chunk_loss(logits, targets, vocab_size: int):
        return chunk(logits, targets, vocab_size, 1.0, write_grad=False)

    def kernel_chunk_loss_and_grad(logits, targets, vocab_size: int, scale: float):
        return chunk(logits, targets, vocab_size, scale, write_grad=True).sum(), logits

    return kernel_chunk_loss, kernel_chunk_loss_and_grad


TRITON_CHUNK_FNS = _kernel_chunk_fns(_triton_chunk)

SOFTMAX_GRAD_SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "softmax_grad.cu")


@functools.cache
def softmax_grad_extension():
    from torch.utils.cpp_extension import load
    return load(name="ds_train_softmax_grad", sources=[SOFTMAX_GRAD_SOURCE], extra_cuda_cflags=["-O3"])


@functools.cache
def softmax_grad_build_error() -> str | None:
    """None once the CUDA kernel is built and loaded, else why it could not be (the compiler's last line); asked
    once per process, so a failed build is not tried again at every chunk."""
    try:
        softmax_grad_extension()
    except Exception as e:  # a missing nvcc, header or library: the build's own message says which
        return (str(e).strip().splitlines() or [type(e).__name__])[-1]
    return None


def cuda_kernel_fits(logits) -> bool:
    """Whether the CUDA kernel is made for these logits: bf16, a width divisible by 8, and two rows (plus the
    block's reserved shared memory) in one SM's shared memory, so that one row's arithmetic overlaps another's
    memory traffic."""
    if logits.dtype != torch.bfloat16 or logits.shape[1] % 8:
        return False
    per_block = logits.shape[1] * 2 + 1024 + 128  # the row, the runtime's reserve, the kernel's own scratch
    return 2 * per_block <= torch.cuda.get_device_properties(logits.device).shared_memory_per_multiprocessor


def gpu_kernel_name(logits) -> str:
    """Which kernel _gpu_chunk runs for these logits."""
    return "CUDA" if cuda_kernel_fits(logits) and softmax_grad_build_error() is None else "Triton"


def _gpu_chunk(logits, targets, vocab_size: int, scale: float, write_grad: bool):
    if gpu_kernel_name(logits) == "Triton":
        return _triton_chunk(logits, targets, vocab_size, scale, write_grad)
    losses = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    softmax_grad_extension().softmax_grad_(logits, targets.long().contiguous(), losses, vocab_size, scale, write_grad)
    return losses


GPU_CHUNK_FNS = _kernel_chunk_fns(_gpu_chunk)


@torch.no_grad()
def token_losses(x, weight, targets, vocab_size: int, chunk_fns=EAGER_CHUNK_FNS, chunk_rows: int = CHUNK_ROWS):
    """x (..., C), weight (padded vocab, C), targets (...) -> each position's cross-entropy (...), float32, for
    evaluation (no gradient), also without the whole logits."""
    losses = _chunk_losses(x.flatten(0, -2), weight, targets.flatten(), vocab_size, chunk_fns[0], chunk_rows)
    return torch.cat(list(losses)).view(targets.shape)


def _chunk_losses(rows, weight, targets, vocab_size: int, loss_fn, chunk_rows: int):
    """Each chunk's per-row losses, rows (N, C) and targets (N,), one chunk of logits at a time."""
    for start in range(0, rows.shape[0], chunk_rows):
        yield loss_fn(_matmul(rows[start:start + chunk_rows], weight.t()), targets[start:start + chunk_rows], vocab_size)


def linear_cross_entropy(x, weight, targets, vocab_size: int, chunk_fns=EAGER_CHUNK_FNS, chunk_rows: int = CHUNK_ROWS):
    """x (..., C), weight (padded vocab, C), targets (...) -> the mean cross-entropy, a float32 scalar."""
    x, targets = x.flatten(0, -2), targets.flatten()
    # decided here: inside a Function's forward grad mode is always off and needs_input_grad ignores torch.no_grad()
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(x, weight, targets, vocab_size, chunk_rows, chunk_fns)
    # evaluation: no gradient computed; the chunks' summed losses, in order (the sum a resumed run must repeat)
    total = torch.zeros((), dtype=torch.float32, device=x.device)
    for losses in _chunk_losses(x, weight, targets, vocab_size, chunk_fns[0], chunk_rows):
        total += losses.sum()
    return total / x.shape[0]
