"""GPT-2 / GPT-3 as llm.c builds them, by llm.c's model descriptors.

Padded vocabulary (50304 rows, of which the 50257 real ones are initialised and scored), token embedding
tied to the output head, learned positions, pre-LayerNorm blocks, tanh GELU, init normal(0, 0.02) with the
residual projections scaled by 1/sqrt(2 * layers), zero biases, unit LayerNorm weights, a fixed seed.
Parameter names follow Hugging Face's GPT-2 (transformer.h.0.attn.c_attn.weight, ...).
"""

import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ds_train import flash_attention, gelu_fusion, loss, recompute, weight_grad

VOCAB_SIZE = 50257
PADDED_VOCAB_SIZE = 50304
GPT2_DEPTHS = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25),
               60: (1920, 30), 72: (2880, 30), 84: (3456, 36)}  # layers: (channels, heads)
GPT3_WIDTHS = {384: (6, 64), 768: (12, 64), 1024: (24, 64), 1536: (24, 96), 2048: (24, 128),
               2560: (32, 80), 4096: (32, 128), 5120: (40, 128), 12288: (96, 128)}  # channels: (layers, head size)
BLOCK_SIZE = {"gpt2": 1024, "gpt3": 2048}
RECOMPUTE_LEVELS = {0: "none", 1: "GELU", 2: "GELU + LayerNorm", 3: "whole blocks (DeepSpeed activation checkpointing)"}


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int = 1024
    vocab_size: int = VOCAB_SIZE
    padded_vocab_size: int = PADDED_VOCAB_SIZE

    @property
    def block_params(self) -> int:
        C = self.n_embd
        return 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)

    @property
    def num_params(self) -> int:
        """Parameters as llm.c counts them: the padded embedding rows included, the tied head once."""
        C = self.n_embd
        return self.padded_vocab_size * C + self.block_size * C + self.n_layer * self.block_params + 2 * C

    def flops_per_token(self, T: int) -> int:
        """llm.c's MFU numerator: 6N for the weight matmuls plus 6*L*C*T for attention."""
        return 6 * self.num_params + 6 * self.n_layer * self.n_embd * T


def config_from_descriptor(descriptor: str) -> GPTConfig:
    """d12, gpt2:d24, gpt3:c768 (llm.c's sizes) or an explicit shape gpt2:dL:cC:hH / gpt3:dL:cC:hH."""
    if m := re.fullmatch(r"(gpt[23]):d(\d+):c(\d+):h(\d+)", descriptor):
        family, L, C, H = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        if min(L, C, H) < 1 or C % H:
            raise ValueError(f"{C} channels must divide into {H} heads, with layers, channels and heads all >= 1")
        return GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=BLOCK_SIZE[family])
    if m := re.fullmatch(r"(?:gpt2:)?d(\d+)", descriptor):
        L = int(m.group(1))
        if L not in GPT2_DEPTHS:
            raise ValueError(f"no GPT-2 size has {L} layers; known depths: {', '.join(map(str, GPT2_DEPTHS))}")
        C, H = GPT2_DEPTHS[L]
        return GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=BLOCK_SIZE["gpt2"])
    if m := re.fullmatch(r"gpt3:c(\d+)", descriptor):
        C = int(m.group(1))
        if C == 5140:  # listed by llm.c, but 5140 is not a multiple of its head size 128 (GPT-3 13B is 5120 wide)
            raise ValueError("5140 channels do not divide into heads of 128; GPT-3 13B is gpt3:c5120")
        if C not in GPT3_WIDTHS:
            raise ValueError(f"no GPT-3 size has {C} channels; known widths: {', '.join(map(str, GPT3_WIDTHS))}")
        L, head_size = GPT3_WIDTHS[C]
        return GPTConfig(n_layer=L, n_head=C // head_size, n_embd=C, block_size=BLOCK_SIZE["gpt3"])
    raise ValueError("expected dL or gpt2:dL (GPT-2 by depth), gpt3:cC (GPT-3 by width), or an explicit "
                     "shape gpt2:dL:cC:hH such as gpt2:d2:c64:h2")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.flash_attention = 0  # set by GPT.set_flash_attention

    def forward(self, x, norm: nn.LayerNorm | None = None):
        """Attention on x, or at -r 2 on norm(x), normalized again in backward (ds_train.recompute)."""
        B, T, C = x.shape
        # (weight_grad.linear: under bf16 ZeRO-1 the weight gradients go straight into DeepSpeed's fp32 ones)
        qkv = weight_grad.linear(x, self.c_attn) if norm is None else recompute.norm_linear(x, norm, self.c_attn)
        if self.flash_attention and self.training:  # evaluation and sampling (eval mode) stay on SDPA, whose
            # kernels are picked per shape; the FlashAttention-4 kernels were measured on training's shapes
            return weight_grad.linear(flash_attention.causal_attention(qkv, self.n_head), self.c_proj)
        q, k, v = qkv.view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return weight_grad.linear(y.transpose(1, 2).reshape(B, T, C), self.c_proj)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.gelu_fusion = 0  # set by GPT.set_gelu_fusion
        self.recompute_gelu = False  # set by GPT.set_recompute (levels 1 and 2)

    def forward(self, x, norm: nn.LayerNorm | None = None):
        """The MLP on x, or at -r 2 (in training) on norm(x), normalized again in backward."""
        # evaluation and sampling (eval mode, shapes that vary) stay unfused: the fused forward alone measured no
        # faster, and only training's shapes were run on a GPU. The weights' gradients straight into fp32 ones
        # (ds_train.weight_grad) take the MLP's own Function too
        if (self.gelu_fusion or self.recompute_gelu or norm is not None
                or weight_grad.main_grad_of(self.c_fc) is not None) and self.training:
            return gelu_fusion.mlp(x, self.c_fc, self.c_proj, self.gelu_fusion, self.recompute_gelu, norm)
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class LMHead(nn.Linear):
    """The output head (weight tied to the token embedding). Given targets it returns the mean cross-entropy
    over the real vocabulary, computed in chunks without the whole logits (ds_train.loss); else the logits
    of the real vocabulary. The padded rows are never scored and get no gradient."""

    def __init__(self, cfg: GPTConfig):
        super().__init__(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        self.vocab_size = cfg.vocab_size
        self.chunk_fns = loss.EAGER_CHUNK_FNS  # GPT.set_compile swaps in compiled ones

    def forward(self, x, targets=None, reduction: str = "mean"):
        if targets is not None:  # on the GPU the aligned 50304-wide matmuls and the CUDA or Triton kernel; on
            # CPU the real rows only (cheaper there) and the eager or compiled chunk functions
            gpu_kernels = x.is_cuda and loss.triton_available()
            weight = self.weight if x.is_cuda else self.weight[:self.vocab_size]
            chunk_fns = loss.GPU_CHUNK_FNS if gpu_kernels else self.chunk_fns
            if reduction == "none":
                return loss.token_losses(x, weight, targets, self.vocab_size, chunk_fns)
            return loss.linear_cross_entropy(x, weight, targets, self.vocab_size, chunk_fns)
        if x.is_cuda:  # tensor cores want the 50304-wide (aligned) product; 50257 columns fall back to slow kernels
            return F.linear(x, self.weight)[..., :self.vocab_size]
        return F.linear(x, self.weight[:self.vocab_size])  # on CPU slicing the logits and its gradient costs more


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)
        self.recompute_norms = False  # set by GPT.set_recompute (level 2)

    def forward(self, x, delta):
        """The block on the residual stream x + delta, which it returns in the same form: the MLP's output is
        handed on unadded, so that the next block adds it in its first LayerNorm's kernel (compiled block by
        block, the add was a kernel of its own, one more pass over the stream per block). delta is None where
        the caller has added them (-r 3)."""
        if delta is not None:
            x = x + delta
        if self.recompute_norms and self.training and torch.is_grad_enabled():  # -r 2: each LayerNorm runs
            # inside the Function of the linear that reads it, which keeps its input and recomputes its output
            x = x + self.attn(x, norm=self.ln_1)
            return x, self.mlp(x, norm=self.ln_2)
        x = x + self.attn(self.ln_1(x))
        return x, self.mlp(self.ln_2(x))

    def forward_summed(self, x):
        """The block on a stream already summed, through the module's hooks and compiled forward (-r 3's
        checkpoint: with partition_activations or cpu_checkpointing DeepSpeed takes each argument for a tensor)."""
        return self(x, None)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, recompute: int = 0, seed: int = 42):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd),
        ))
        self.lm_head = LMHead(cfg)
        self.lm_head.weight = self.transformer.wte.weight
        self.gelu_fusion = 0  # set_gelu_fusion sets it, and each block's MLP, together
        self.flash_attention = 0  # likewise set_flash_attention
        self.set_recompute(recompute)
        self._init_weights(seed)

    def set_recompute(self, level: int):
        """llm.c's -r: 1 recomputes GELU's output inside the MLP's backward (ds_train.gelu_fusion), 2 also the
        LayerNorms' outputs (ds_train.recompute); 3 is whole blocks, through DeepSpeed (_run_block). Each keeps the
        GELU fusion (-ge) and the attention kernels (-fa): no matmul or attention runs twice below level 3."""
        if level not in RECOMPUTE_LEVELS:
            raise ValueError(f"recompute level must be one of {sorted(RECOMPUTE_LEVELS)}, got {level}")
        self.recompute = level
        for block in self.transformer.h:
            block.recompute_norms = level == 2
            block.mlp.recompute_gelu = level in (1, 2)

    def set_gelu_fusion(self, level: int):
        """llm.c's -ge: GELU in the MLP's matmul epilogues, 1 in forward, 2 in forward and backward
        (ds_train.gelu_fusion; cuBLASLt on CUDA, the same arithmetic unfused elsewhere), in train mode."""
        if level not in gelu_fusion.LEVELS:
            raise ValueError(f"GELU fusion level must be one of {sorted(gelu_fusion.LEVELS)}, got {level}")
        self.gelu_fusion = level
        for block in self.transformer.h:
            block.mlp.gelu_fusion = level

    def set_flash_attention(self, level: int):
        """-fa 1: each block's attention through ds_train.flash_attention (FlashAttention-4 on CUDA, its
        reference arithmetic elsewhere) in train mode; 0: SDPA."""
        if level not in flash_attention.LEVELS:
            raise ValueError(f"flash attention level must be one of {sorted(flash_attention.LEVELS)}, got {level}")
        self.flash_attention = level
        for block in self.transformer.h:
            block.attn.flash_attention = level

    def set_compile(self, enabled: bool = True):
        """torch.compile each block's forward and the loss's chunk functions. Compiling block by block keeps
        module hooks (ZeRO-3 gathers a block's parameters in one) eager at the block boundary, and all blocks
        share one compiled graph; recompute (-r 1, 2) is compiled with the block. Training compiles for
        its fixed shape; the first other shape (HellaSwag's batches) gets one graph with dynamic shapes.
        LayerNorm rows up to 2048 wide are normalized in one pass (ds_train.inductor_choices)."""
        if enabled:
            from ds_train import inductor_choices  # imports Inductor: only when compiling
            inductor_choices.install()
        for block in self.transformer.h:
            if enabled:
                block.forward = torch.compile(Block.forward.__get__(block))
            else:
                block.__dict__.pop("forward", None)
        self.lm_head.chunk_fns = loss.compiled_chunk_fns() if enabled else loss.EAGER_CHUNK_FNS

    @torch.no_grad()
    def _init_weights(self, seed: int):
        gen = torch.Generator().manual_seed(seed)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, residual_std, generator=gen)
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02, generator=gen)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)  # LayerNorm gains
        # llm.c initialises only the real vocabulary rows; the padding stays zero and, never scored, never moves
        self.transformer.wte.weight[self.config.vocab_size:].zero_()

    def _run_block(self, block, x, delta):
        if self.recompute == 3 and torch.is_grad_enabled():
            import deepspeed  # configured by the caller from the JSON's activation_checkpointing section
            # the checkpoint keeps its inputs: the pair summed here, one tensor per block rather than two
            return deepspeed.checkpointing.checkpoint(block.forward_summed, x + delta)
        return block(x, delta)

    def forward(self, idx, targets=None, reduction: str = "mean"):
        """The cross-entropy over the real vocabulary (float32) if targets are given: the mean, or with
        reduction="none" each position's (B, T), for evaluation; else the logits (B, T, 50257)."""
        T = idx.shape[1]
        x = self.transformer.wte(idx)
        # the position embedding is the first block's delta (see Block.forward), laid out like every later one,
        # so that all blocks share one compiled graph
        delta = self.transformer.wpe(torch.arange(T, device=idx.device)).expand_as(x).contiguous()
        for block in self.transformer.h:
            x, delta = self._run_block(block, x, delta)
        return self.lm_head(self.transformer.ln_f(x + delta), targets, reduction)

    def param_groups(self, weight_decay: float) -> list:
        """AdamW groups: decay on 2-D weights (embeddings, matmuls), never on biases or LayerNorm."""
        params = list(self.parameters())  # the tied embedding/head appears once
        # ZeRO-3 leaves a parameter empty between uses; ds_shape is then its real shape
        matrix = [len(getattr(p, "ds_shape", p.shape)) >= 2 for p in params]
        return [{"params": [p for p, m in zip(params, matrix) if m], "weight_decay": weight_decay},
                {"params": [p for p, m in zip(params, matrix) if not m], "weight_decay": 0.0}]

    @torch.no_grad()
    def generate(self, idx, new_tokens: int, generator: torch.Generator):
        """Sample with temperature 1 from the full softmax; draws on the CPU generator so any device agrees."""
        for _ in range(new_tokens):
            logits = self(idx[:, -self.config.block_size:])[:, -1, :]
            probs = F.softmax(logits.float(), dim=-1).cpu()
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator).to(idx.device)], dim=1)
        return idx
