"""ds_train.grad_fold: a micro-step's bf16 gradients added into their fp32 accumulators in one kernel launch,
against one add_ per tensor (GPU only; on the CPU DeepSpeed's per-parameter fold runs, tests/test_training.py)."""

import pytest
import torch

from ds_train import grad_fold

pytestmark = pytest.mark.skipif(not grad_fold.available("cuda" if torch.cuda.is_available() else "cpu"),
                                reason="the one-launch fold is a Triton kernel on a CUDA GPU")

# sizes as a model has them (biases, LayerNorms, matrices, the padded embedding) and awkward ones: a single
# element, odd lengths, one just over the kernel's block
SIZES = [768, 2304, 768 * 2304, 1, 3, 4097, grad_fold.BLOCK + 1, 50304 * 64, 5]


def accumulators(sizes, gap=0):
    """fp32 views into one flat buffer, as DeepSpeed's BF16_Optimizer keeps them (gap: elements between them)."""
    flat = torch.randn(sum(sizes) + gap * len(sizes), device="cuda")
    views, at = [], 0
    for n in sizes:
        views.append(flat[at:at + n])
        at += n + gap
    return views


def check(accs, grads, fold=None):
    """fold (a new Fold of accs if None) adds grads into accs: the same bits as an add_ each."""
    expected = [a.clone() for a in accs]
    for e, g in zip(expected, grads):
        if g is not None:
            e.add_(g)
    (fold or grad_fold.Fold(accs))(grads)
    torch.cuda.synchronize()
    for a, e in zip(accs, expected):
        assert torch.equal(a, e)


def test_one_launch_fold_equals_an_add_per_tensor_bitwise():
    accs = accumulators(SIZES)
    grads = [torch.randn(n, device="cuda").bfloat16() for n in SIZES]
    fold = grad_fold.Fold(accs)
    assert len(fold.in_kernel) < len(SIZES)  # the odd sizes leave the rest misaligned: those take their own add
    check(accs, grads, fold)
    for _ in range(3):  # the same Fold again, with fresh gradients each time, as micro-steps bring them
        check(accs, [torch.randn(n, device="cuda").bfloat16() for n in SIZES], fold)


def test_aligned_accumulators_all_go_through_the_kernel():
    sizes = [768, 2304, 768 * 2304, 4096, 50304 * 64]
    accs = accumulators(sizes)
    assert grad_fold.Fold(accs).in_kernel == list(range(len(sizes)))
    check(accs, [torch.randn(n, device="cuda").bfloat16() for n in sizes])


def test_a_missing_or_unsuitable_gradient_falls_back_to_adds():
    sizes = [768, 2304, 768 * 2304]
    accs = accumulators(sizes)
    check(accs, [torch.randn(768, device="cuda").bfloat16(), None, torch.randn(768 * 2304, device="cuda").bfloat16()])
    strided = torch.randn(2304, 2, device="cuda").bfloat16()[:, 0]  # not contiguous
    check(accs, [torch.randn(768, device="cuda").bfloat16(), strided, torch.randn(768 * 2304, device="cuda").bfloat16()])
