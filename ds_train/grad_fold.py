"""Many bf16 gradients added into their float32 accumulators in one GPU kernel launch.

Under bf16 ZeRO-1 each micro-step's gradients are folded into fp32 accumulators, one add per parameter: d12
launches 148 small kernels a micro-step, d48 580, and an add that mixes dtypes runs PyTorch's unvectorized
elementwise path. Here one Triton kernel does them all: each program adds one block of one tensor, finding its
tensor in a table made once for the accumulators (their sizes and addresses do not change during a run), and
its gradient through an offset table filled per call (autograd hands over new gradients every micro-step).

The sums are the same bits as `acc.add_(grad)`: each element is acc + float(grad) in fp32, bf16 converting to
fp32 exactly.
"""

import functools

import numpy as np
import torch

from ds_train import loss  # its triton_available(): whether Triton kernels can run here

BLOCK = 4096  # elements per program
ALIGN = 16  # bytes: the offsets below are hinted as multiples of this, for 16-byte loads and stores


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def add_bf16_into_fp32(acc_base, grad_base, acc_offsets, grad_offsets, sizes, block_tensor, block_start,
                           BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        i = tl.load(block_tensor + pid)
        cols = tl.load(block_start + pid) + tl.arange(0, BLOCK)
        mask = cols < tl.load(sizes + i)
        acc = acc_base + tl.multiple_of(tl.load(acc_offsets + i), 4)  # 16-byte aligned (checked by the caller)
        grad = grad_base + tl.multiple_of(tl.load(grad_offsets + i), 8)
        total = tl.load(acc + cols, mask=mask) + tl.load(grad + cols, mask=mask).to(tl.float32)
        tl.store(acc + cols, total, mask=mask)

    return add_bf16_into_fp32


def available(device) -> bool:
    return torch.device(device).type == "cuda" and loss.triton_available()


class Fold:
    """fold(grads) adds grads[k] into accumulators[k] for all k at once (a plain add_ each where a pair does not
    suit the kernel: not contiguous, other dtypes or sizes, not 16-byte aligned)."""

    def __init__(self, accumulators, block: int = BLOCK, num_warps: int = 4):
        self.accumulators, self.block, self.num_warps = list(accumulators), block, num_warps
        base = self.accumulators[0]
        suits = [a.is_cuda and a.dtype == torch.float32 and a.is_contiguous() and a.device == base.device
                 and (a.data_ptr() - base.data_ptr()) % ALIGN == 0 and a.numel() > 0 for a in self.accumulators]
        self.kernel_ok = suits if base.data_ptr() % ALIGN == 0 else [False] * len(suits)
        self.in_kernel = [k for k, ok in enumerate(self.kernel_ok) if ok]
        if not self.in_kernel:
            return
        sizes = np.array([self.accumulators[k].numel() for k in self.in_kernel], dtype=np.int64)
        blocks = -(-sizes // block)
        first = np.repeat(np.cumsum(blocks) - blocks, blocks)  # each program's tensor's first program
        tensor = np.repeat(np.arange(len(sizes)), blocks)
        device = base.device
        self.base = base
        self.sizes = torch.from_numpy(sizes).to(device)
        self.acc_offsets = torch.tensor([(self.accumulators[k].data_ptr() - base.data_ptr()) // 4
                                         for k in self.in_kernel], dtype=torch.int64, device=device)
        self.block_tensor = torch.from_numpy(tensor.astype(np.int32)).to(device)
        self.block_start = torch.from_numpy((np.arange(len(tensor)) - first) * block).to(device)

    def __call__(self, grads):
        """grads: one bf16 gradient (or None: skipped) per accumulator, in the accumulators' order."""
        grads = list(grads)
        batch, base = [], None
        for k, (acc, grad) in enumerate(zip(self.accumulators, grads)):
            if grad is None:
                continue
            if self.kernel_ok[k] and grad.dtype == torch.bfloat16 and grad.is_contiguous() \
                    and grad.numel() == acc.numel() and grad.device == acc.device \
                    and (base is None or (grad.data_ptr() - base.data_ptr()) % ALIGN == 0) and grad.data_ptr() % ALIGN == 0:
                base = grad if base is None else base
                batch.append(k)
            else:
                acc.add_(grad.reshape(acc.shape))
        if not batch or len(batch) != len(self.in_kernel):  # some gradient missing or unsuitable: each its own add
            for k in batch:
                self.accumulators[k].add_(grads[k].reshape(self.accumulators[k].shape))
            return
        offsets = torch.tensor([(grads[k].data_ptr() - base.data_ptr()) // 2 for k in batch], dtype=torch.int64)
        offsets = offsets.pin_memory().to(self.base.device, non_blocking=True)
        _kernel()[(self.block_tensor.numel(),)](self.base, base, self.acc_offsets, offsets, self.sizes,
                                                self.block_tensor, self.block_start, BLOCK=self.block, num_warps=self.num_warps)
