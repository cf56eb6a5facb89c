"""The head's chunked cross-entropy (ds_train.loss): the same loss and gradients as the plain full-logits
cross-entropy, in any number of chunks, with the padded vocabulary columns out of the softmax."""

import pytest
import torch
import torch.nn.functional as F

from ds_train import loss

V, VP, C = 50257, 50304, 16


def inputs(rows, seed=0, padded=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, C, generator=gen, dtype=torch.float64).requires_grad_()
    w = (torch.randn(VP if padded else V, C, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    t = torch.randint(0, V, (rows,), generator=gen)
    return x, w, t


def reference(x, w, t):
    """The plain way: the whole (rows, 50257) logits and F.cross_entropy."""
    return F.cross_entropy((x @ w[:V].t()), t)


@pytest.mark.parametrize("chunk_rows", [1000, 96, 37])  # one chunk, an exact split, a ragged last chunk
@pytest.mark.parametrize("padded", [True, False])  # the GPU's 50304-wide weight, the CPU's 50257 real rows
def test_loss_and_both_gradients_match_full_logits(chunk_rows, padded):
    x, w, t = inputs(96, padded=padded)
    expected = reference(x, w, t)
    gx, gw = torch.autograd.grad(expected, (x, w))
    got = loss.linear_cross_entropy(x, w, t, V, chunk_rows=chunk_rows)
    assert got.dtype == torch.float32  # the loss is reported in float32 whatever the model's dtype
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    got_gx, got_gw = torch.autograd.grad(got * 3.0, (x, w))  # a scaled loss (gradient accumulation divides it)
    # float64 in, but the softmax is computed in float32 (as for bf16 models): float32 agreement
    torch.testing.assert_close(got_gx, 3.0 * gx, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got_gw, 3.0 * gw, rtol=1e-4, atol=1e-7)
    if padded:  # never scored, the padded rows of the tied embedding get exactly no gradient
        assert torch.count_nonzero(got_gw[V:]) == 0


def test_bf16_chunks_are_as_accurate_as_one_matmul():
    x, w, t = inputs(64)

    def grads(chunk_rows):
        x16, w16 = x.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
        loss.linear_cross_entropy(x16, w16, t, V, chunk_rows=chunk_rows).backward()
        return x16.grad, w16.grad

    reference_w = torch.autograd.grad(reference(x, w, t), w)[0]
    error = lambda g: float((g.double() - reference_w).norm() / reference_w.norm())
    one_x, one_w = grads(64)  # one matmul over all rows
    many_x, many_w = grads(8)  # 8 chunk products summed in float32: about as close to float64 as one matmul
    assert many_w.dtype == torch.bfloat16
    torch.testing.assert_close(many_x, one_x, rtol=0, atol=0)  # row chunks do not touch each other's rows
    assert error(many_w) < 1.05 * error(one_w)  # error (about 2e-3) from bf16 inputs, not from the chunking


def test_cpu_bf16_head_products_are_rounded_once_and_weight_gradients_not_at_all():
    """On a CPU the head's bf16 products (computed in float32 where torch has no fast bf16 matmul) are the exact
    products rounded once to bf16, as a bf16 matmul accumulating in float32 gives; the weight gradient adds each
    chunk's product into its float32 buffer without a bf16 rounding, as cuBLAS does on the GPU."""
    gen = torch.Generator().manual_seed(0)
    x, w, grad_logits = (torch.randn(*shape, generator=gen).bfloat16() for shape in ((64, 512), (300, 512), (64, 300)))
    exact = x.double() @ w.double().t()
    logits = loss._matmul(x, w.t())
    assert logits.dtype == torch.bfloat16
    assert bool(((logits.double() - exact).abs() <= 2.0 ** -8 * exact.abs() + 1e-5).all())  # half a bf16 step
    torch.testing.assert_close(logits, x @ w.t(), rtol=2 ** -7, atol=1e-5)  # torch's own bf16 matmul, to a step
    grad_weight = torch.zeros(300, 512)
    for rows in (slice(0, 40), slice(40, 64)):  # two chunks of rows
        loss._accumulate(grad_weight, grad_logits[rows], x[rows])
    torch.testing.assert_close(grad_weight.double(), grad_logits.double().t() @ x.double(), rtol=1e-5, atol=1e-4)


def test_token_losses_are_each_positions_cross_entropy():
    x, w, t = inputs(24)
    x, t = x.detach().view(4, 6, C), t.view(4, 6)
    expected = F.cross_entropy((x @ w[:V].t()).flatten(0, 1), t.flatten(), reduction="none").view(4, 6)
    got = loss.token_losses(x, w.detach(), t, V, chunk_rows=5)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)


def test_no_grad_forward_keeps_nothing_for_backward():
    x, w, t = inputs(32)
    with torch.no_grad():
        got = loss.linear_cross_entropy(x, w, t, V, chunk_rows=10)
    assert not got.requires_grad and got.item() == pytest.approx(reference(x, w, t).item(), rel=1e-6)


def test_compiled_chunk_functions_agree_with_eager():
    x, w, t = inputs(40)
    x, w = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    eager = loss.linear_cross_entropy(x, w, t, V, loss.EAGER_CHUNK_FNS, chunk_rows=16)
    eager_grads = torch.autograd.grad(eager, (x, w))
    compiled = loss.linear_cross_entropy(x, w, t, V, loss.compiled_chunk_fns(), chunk_rows=16)
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-6)
    for got, expected in zip(torch.autograd.grad(compiled, (x, w)), eager_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def assert_gpu_head_agrees(chunk_fns, reference_fns):
    """Through the chunked head on the GPU in bf16, over two chunks of 4096 rows (the second ragged), chunk_fns give
    reference_fns's loss and gradients; returns the inputs (x, weight, targets)."""
    x, w, t = inputs(5000)
    x, w, t = x.detach().cuda().bfloat16().requires_grad_(), w.detach().cuda().bfloat16().requires_grad_(), t.cuda()
    expected = loss.linear_cross_entropy(x, w, t, V, reference_fns)
    expected_grads = torch.autograd.grad(expected, (x, w))
    got = loss.linear_cross_entropy(x, w, t, V, chunk_fns)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    for got_grad, expected_grad in zip(torch.autograd.grad(got, (x, w)), expected_grads):
        torch.testing.assert_close(got_grad.float(), expected_grad.float(), rtol=1e-2, atol=1e-6)
    return x.detach(), w.detach(), t


@pytest.mark.skipif(not loss.triton_available(), reason="the Triton kernel needs a CUDA GPU")
def test_triton_kernel_agrees_with_eager_on_the_gpu():
    x, w, t = assert_gpu_head_agrees(loss.TRITON_CHUNK_FNS, loss.EAGER_CHUNK_FNS)
    token = loss.token_losses(x, w, t, V, loss.TRITON_CHUNK_FNS)
    torch.testing.assert_close(token, loss.token_losses(x, w, t, V), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not loss.triton_available(), reason="the CUDA kernel needs a CUDA GPU")
def test_cuda_kernel_agrees_with_triton_on_the_gpu():
    """The one-pass CUDA kernel (what a bf16 GPU run uses where it fits) against the Triton kernel: the same
    losses and gradients, padded columns at 0, a bad target a NaN loss, evaluation's logits left alone."""
    assert loss.softmax_grad_build_error() is None
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(5000, VP, device="cuda", generator=gen) * 3).bfloat16()
    targets = torch.randint(0, V, (5000,), device="cuda", generator=gen)
    targets[:3] = torch.tensor([0, V - 1, 12345])  # the first and last real columns
    if not loss.cuda_kernel_fits(logits):
        pytest.skip("this GPU's SM does not hold two 50304-wide bf16 rows (an H100 or H200 does)")
    assert loss.gpu_kernel_name(logits) == "CUDA"
    triton_logits, cuda_logits = logits.clone(), logits.clone()
    triton_losses = loss._triton_chunk(triton_logits, targets, V, 1e-3, write_grad=True)
    cuda_losses = loss._gpu_chunk(cuda_logits, targets, V, 1e-3, write_grad=True)
    torch.testing.assert_close(cuda_losses, triton_losses, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cuda_logits.float(), triton_logits.float(), rtol=1e-2, atol=1e-8)
    assert torch.count_nonzero(cuda_logits[:, V:]) == 0
    assert (cuda_logits[torch.arange(5000), targets] < 0).all()  # softmax - 1 at each row's target
    evaluated = logits.clone()
    torch.testing.assert_close(loss.GPU_CHUNK_FNS[0](evaluated, targets, V), triton_losses, rtol=1e-5, atol=1e-5)
    assert torch.equal(evaluated, logits)
    bad = targets.clone()
    bad[7] = VP + 5
    losses = loss.GPU_CHUNK_FNS[0](logits.clone(), bad, V)
    assert losses[7].isnan() and not losses[torch.arange(5000) != 7].isnan().any()
    assert_gpu_head_agrees(loss.GPU_CHUNK_FNS, loss.TRITON_CHUNK_FNS)


def test_evaluation_under_no_grad_takes_no_gradient_path():
    """Under torch.no_grad() (val loss in training and in ds_train.evaluate) the loss of weights that require grad
    is the chunks' losses only: the gradient pass, which also failed on fp32 weights under bf16 autocast, never runs."""
    x, w, t = inputs(96)

    def no_gradient_pass(*args):
        raise AssertionError("the gradient pass ran under torch.no_grad()")
    with torch.no_grad():
        got = loss.linear_cross_entropy(x, w, t, V, loss.EAGER_CHUNK_FNS[:1] + (no_gradient_pass,), chunk_rows=37)
        assert got.item() == pytest.approx(reference(x, w, t).item(), rel=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 weights, bf16 matmuls: ds_train.evaluate on a GPU
            x32, w32 = x.float(), w.float()
            mixed = loss.linear_cross_entropy(x32, w32, t, V, chunk_rows=37)
    assert abs(mixed.item() - got.item()) < 0.05
    assert loss.linear_cross_entropy(x, w, t, V, chunk_rows=37).requires_grad  # with grad enabled, it trains
