"""The model: llm.c's shapes, parameter counts and init; causal attention; recompute that saves memory but not results."""

import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from ds_train import flash_attention, gelu_fusion
from ds_train.model import GPT, GPTConfig, config_from_descriptor

# REFERENCE.md: descriptor -> (layers, channels, heads, max T)
SIZES = {
    "d6": (6, 384, 6, 1024), "d12": (12, 768, 12, 1024), "gpt2:d24": (24, 1024, 16, 1024),
    "d36": (36, 1280, 20, 1024), "gpt2:d48": (48, 1600, 25, 1024), "d60": (60, 1920, 30, 1024),
    "d72": (72, 2880, 30, 1024), "d84": (84, 3456, 36, 1024),
    "gpt3:c384": (6, 384, 6, 2048), "gpt3:c768": (12, 768, 12, 2048), "gpt3:c1024": (24, 1024, 16, 2048),
    "gpt3:c1536": (24, 1536, 16, 2048), "gpt3:c2048": (24, 2048, 16, 2048), "gpt3:c2560": (32, 2560, 32, 2048),
    "gpt3:c4096": (32, 4096, 32, 2048), "gpt3:c5120": (40, 5120, 40, 2048), "gpt3:c12288": (96, 12288, 96, 2048),
    "gpt2:d2:c64:h2": (2, 64, 2, 1024), "gpt3:d3:c96:h4": (3, 96, 4, 2048),
}


@pytest.mark.parametrize("descriptor", SIZES)
def test_descriptors_give_llmc_shapes_and_counts(descriptor):
    cfg = config_from_descriptor(descriptor)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size) == SIZES[descriptor]
    assert (cfg.vocab_size, cfg.padded_vocab_size) == (50257, 50304)
    if cfg.n_layer * cfg.n_embd <= 96 * 2048:  # build the big ones without memory
        with torch.device("meta"):
            model = GPT(cfg)
        assert sum(p.numel() for p in model.parameters()) == cfg.num_params


def test_d12_parameter_count_is_llmc_s():
    cfg = config_from_descriptor("d12")
    assert cfg.num_params == 124_475_904  # llm.c, padded vocabulary
    assert cfg.num_params - (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd == 124_439_808
    assert sum(p.numel() for p in GPT(cfg).parameters()) == 124_475_904


@pytest.mark.parametrize("descriptor, message", [
    ("d13", "no GPT-2 size has 13 layers"), ("gpt3:c5140", "GPT-3 13B is gpt3:c5120"),
    ("gpt3:c999", "no GPT-3 size has 999 channels"), ("gpt2:d2:c65:h2", "65 channels must divide into 2 heads"),
    ("llama", "expected dL or gpt2:dL"),
])
def test_bad_descriptors(descriptor, message):
    with pytest.raises(ValueError, match=message):
        config_from_descriptor(descriptor)


def test_init_follows_llmc():
    cfg = config_from_descriptor("gpt2:d4:c256:h4")
    model = GPT(cfg)
    params = dict(model.named_parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    wte = params["transformer.wte.weight"]
    assert torch.all(wte[cfg.vocab_size:] == 0)  # padded rows
    assert wte[:cfg.vocab_size].std().item() == pytest.approx(0.02, rel=0.01)
    proj = torch.cat([params[f"transformer.h.{i}.{m}.c_proj.weight"].flatten() for i in range(4) for m in ("attn", "mlp")])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * cfg.n_layer), rel=0.02)
    assert params["transformer.h.0.mlp.c_fc.weight"].std().item() == pytest.approx(0.02, rel=0.02)
    for name, p in params.items():
        if name.endswith(".bias"):
            assert torch.all(p == 0), name
        elif "ln" in name:
            assert torch.all(p == 1), name


def test_init_is_fixed_by_the_seed():
    cfg = config_from_descriptor("gpt2:d2:c64:h2")
    a, b, c = GPT(cfg), GPT(cfg), GPT(cfg, seed=7)
    torch.manual_seed(123)  # the global RNG does not matter
    d = GPT(cfg)
    for (name, pa), pb, pc, pd in zip(a.named_parameters(), b.parameters(), c.parameters(), d.parameters()):
        assert torch.equal(pa, pb) and torch.equal(pa, pd), name
    assert not torch.equal(a.transformer.wte.weight, c.transformer.wte.weight)


def test_attention_is_causal():
    model = GPT(config_from_descriptor("gpt2:d2:c64:h2")).eval()
    idx = torch.randint(0, 50257, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 50257
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert a.shape == (2, 16, 50257)
    assert torch.equal(a[:, :10], b[:, :10]) and not torch.allclose(a[:, 10:], b[:, 10:])


def test_loss_is_cross_entropy_over_the_real_vocabulary_and_padding_gets_no_gradient():
    model = GPT(config_from_descriptor("gpt2:d2:c64:h2"))
    idx, targets = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    loss = model(idx, targets)
    with torch.no_grad():
        logits = model(idx)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item(), rel=1e-6)
    assert loss.item() == pytest.approx(math.log(50257), abs=0.1)  # near-uniform at init
    loss.backward()
    grad = model.transformer.wte.weight.grad
    assert torch.all(grad[50257:] == 0) and grad[:50257].abs().sum() > 0


def test_param_groups_decay_only_2d_weights():
    model = GPT(config_from_descriptor("gpt2:d2:c64:h2"))
    decay, no_decay = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 for p in decay["params"])
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(
        n for n, p in model.named_parameters() if n.endswith(".bias") or ".ln_" in n)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def _activation_bytes_and_grads(level, gelu_fusion=0, cuda=torch.cuda.is_available(), compiled=False):
    """Memory the forward pass leaves allocated for backward, and the gradients. On a GPU machine the model runs
    on the GPU, as the trainer's would: DeepSpeed's checkpointing (level 3) moves a block's inputs to the
    accelerator there is, whatever device the model is on. On CPU the allocator's events count the memory.
    `compiled`: through the trainer's per-block torch.compile, which decides for itself what to keep."""
    import torch._dynamo
    device = "cuda" if cuda else "cpu"
    cfg = GPTConfig(n_layer=3, n_head=4, n_embd=128, vocab_size=128, padded_vocab_size=128)  # blocks dominate
    model = GPT(cfg, recompute=level).to(device)
    model.set_gelu_fusion(gelu_fusion)
    if compiled:
        torch._dynamo.reset()  # a fresh graph for this level, not a cached one or, past dynamo's limit, eager
        model.set_compile(True)
    idx = torch.randint(0, 128, (8, 64), generator=torch.Generator().manual_seed(0)).to(device)
    for _ in range(2):  # the first pass includes one-off allocations
        model.zero_grad(set_to_none=True)
        if cuda:
            before = torch.cuda.memory_allocated()
            loss = model(idx, idx.roll(-1, 1))
            held = torch.cuda.memory_allocated() - before
        else:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                loss = model(idx, idx.roll(-1, 1))
            held = sum(event.self_cpu_memory_usage for event in prof.key_averages())
        loss.backward()
    return held, [p.grad.cpu() for p in model.parameters()]


def test_recompute_levels_hold_less_memory_and_give_identical_gradients():
    results = {level: _activation_bytes_and_grads(level) for level in (0, 1, 2, 3)}
    held = [results[level][0] for level in (0, 1, 2, 3)]
    assert held[0] > held[1] > held[2] > held[3], held
    per_token_layer = 8 * 64 * 128 * 4 * 3  # bytes of one C-wide fp32 activation, all layers
    assert held[0] - held[1] >= 3.5 * per_token_layer  # GELU output (4C) no longer kept
    assert held[1] - held[2] >= 1.9 * per_token_layer  # the two LayerNorm outputs (C each) no longer kept
    assert held[3] < 2 * per_token_layer  # one input per block (the residual pair summed first) and the head's
    for level in (1, 2, 3):
        for g0, g in zip(results[0][1], results[level][1]):
            assert torch.equal(g0, g)


def test_compiled_recompute_holds_what_eager_recompute_holds():
    """-r 1 and -r 2 through torch.compile (the GPU's default) keep what they keep eagerly. Traced as plain ops,
    the recomputation in backward was merged with the forward's (common-subexpression elimination) and the
    forward's output kept: every level held -r 0's memory."""
    for level in (0, 1, 2):
        eager_held, eager_grads = _activation_bytes_and_grads(level, cuda=False)
        held, grads = _activation_bytes_and_grads(level, cuda=False, compiled=True)
        assert held == pytest.approx(eager_held, rel=0.02), level
        for e, g in zip(eager_grads, grads):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_generate_is_reproducible_and_stays_in_the_vocabulary():
    model = GPT(config_from_descriptor("gpt2:d2:c64:h2")).eval()
    start = torch.full((1, 1), 50256)
    a = model.generate(start, 20, torch.Generator().manual_seed(1337))
    b = model.generate(start, 20, torch.Generator().manual_seed(1337))
    c = model.generate(start, 20, torch.Generator().manual_seed(1))
    assert a.shape == (1, 21) and torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.max()) < 50257


def loss_and_grads(model, forward=None):
    """(loss, parameter gradients) of one forward+backward on a fixed batch, through `forward` (default: model)."""
    idx = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(0))
    model.zero_grad()
    loss = (model if forward is None else forward)(idx, idx.roll(-1, 1))
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def assert_same(got, expected):
    assert got[0] == pytest.approx(expected[0], abs=1e-5)
    for g, e in zip(got[1], expected[1]):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("level", [0, 2])
def test_torch_compile_traces_the_whole_model_and_matches_eager(level):
    model = GPT(config_from_descriptor("gpt2:d2:c64:h2"), recompute=level)
    eager = loss_and_grads(model)
    assert_same(loss_and_grads(model, torch.compile(model, fullgraph=True)), eager)  # fullgraph: no graph breaks


@pytest.mark.parametrize("level", [0, 1])
def test_trainer_compile_shares_one_block_graph_and_matches_eager(level):
    """GPT.set_compile (what --compile 1 does): each block's forward compiled, one graph for all blocks (a
    recompile per block would hit dynamo's limit and fall back to eager), the same loss and gradients."""
    import torch._dynamo
    model = GPT(config_from_descriptor("gpt2:d4:c64:h2"), recompute=level)
    eager = loss_and_grads(model)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    keys = list(model.state_dict())
    model.set_compile(True)
    assert list(model.state_dict()) == keys  # no wrapper module: checkpoints and exports keep their names
    assert_same(loss_and_grads(model), eager)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # the block and the loss's chunk
    model.set_compile(False)
    assert all("forward" not in block.__dict__ for block in model.transformer.h)


@pytest.mark.parametrize("level", [1, 2])
def test_gelu_fusion_gives_the_unfused_loss_and_gradients(level, monkeypatch):
    """-ge 1/2 send the MLP through ds_train.gelu_fusion (two custom ops and a hand-written backward). On CPU
    the ops do the unfused arithmetic, so the loss and every gradient must be the plain MLP's: eagerly,
    compiled whole without a graph break, and through the trainer's per-block compile. Eval mode (evaluation,
    sampling) runs the plain MLP."""
    import torch._dynamo
    model = GPT(config_from_descriptor("gpt2:d2:c64:h2"))
    plain = loss_and_grads(model)
    model.set_gelu_fusion(level)
    assert all(block.mlp.gelu_fusion == level for block in model.transformer.h)
    assert_same(loss_and_grads(model), plain)
    torch._dynamo.reset()
    assert_same(loss_and_grads(model, torch.compile(model, fullgraph=True)), plain)
    model.set_compile(True)
    assert_same(loss_and_grads(model), plain)
    model.set_compile(False)
    calls = []  # training goes through the fused MLP, evaluation (eval mode) does not
    fused_mlp = gelu_fusion.mlp
    monkeypatch.setattr(gelu_fusion, "mlp", lambda *args: calls.append(args[3]) or fused_mlp(*args))  # the level
    loss_and_grads(model)
    assert calls == [level, level]  # one per block
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 50257)
    assert calls == [level, level]
    model.train()
    model.set_gelu_fusion(0)
    assert loss_and_grads(model)[0] == plain[0]
    assert len(calls) == 2


@pytest.mark.parametrize("level", [1, 2])
def test_recompute_keeps_gelu_fusion_and_gives_the_plain_gradients(level):
    """-r 1 and -r 2 with -ge 1/2: the fused MLP keeps only GELU's input and computes GELU's output again in
    backward, so it holds what the unfused MLP holds at that level, and the loss and gradients are the plain
    model's, eagerly and through the trainer's per-block compile (on CPU, where the fused ops do the unfused
    arithmetic in fp32; the GPU's kernels at -r 1 and 2 are checked against -ge 0 in bf16 below)."""
    held, grads = _activation_bytes_and_grads(level, cuda=False)
    for fusion in (1, 2):
        fused_held, fused_grads = _activation_bytes_and_grads(level, gelu_fusion=fusion, cuda=False)
        assert fused_held == pytest.approx(held, rel=0.02)
        for g, f in zip(grads, fused_grads):
            torch.testing.assert_close(f, g, rtol=1e-4, atol=1e-6)
    assert _activation_bytes_and_grads(0, gelu_fusion=2, cuda=False)[0] - held >= 3.5 * 8 * 64 * 128 * 4 * 3  # GELU's output
    model = GPT(config_from_descriptor("gpt2:d2:c64:h2"))
    plain = loss_and_grads(model)
    model.set_recompute(level)
    model.set_gelu_fusion(2)
    assert_same(loss_and_grads(model), plain)
    model.set_compile(True)
    assert_same(loss_and_grads(model), plain)
    model.set_compile(False)
    with pytest.raises(ValueError, match="one of \\[0, 1, 2\\], got 3"):
        model.set_gelu_fusion(3)


def test_column_sum_passes_torchs_custom_op_checks():
    """gelu_fusion.column_sum, level 2's bias gradient at GELU's input (on a GPU cuBLAS's ones @ grad, checked in the
    GPU test below): the sum over rows, and its fake function and schema as torch.compile relies on them."""
    grad = torch.randn(300, 24).bfloat16()
    torch.testing.assert_close(gelu_fusion.column_sum(grad), grad.double().sum(0).bfloat16())
    torch.library.opcheck(torch.ops.ds_train.column_sum, (grad,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the cuBLASLt kernels need a CUDA GPU")
def test_gelu_fusion_kernels_match_the_unfused_arithmetic_on_the_gpu():
    """The cuBLASLt epilogues and level 2's bias gradient (cuBLAS's ones @ grad) against fp32 or float64 reference
    arithmetic, each rounded once to bf16 (so within bf16's tolerance), and the fused bf16 model's loss and
    gradients against the unfused one's, also at -r 1 and 2; and the bias gradient's bits the same on every call."""
    import torch.nn.functional as F
    gen = torch.Generator(device="cuda").manual_seed(0)
    M, C = 1000, 256

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=gen) * scale).bfloat16()

    x, w_fc, b_fc, w_proj, grad_y = randn(M, C), randn(4 * C, C, scale=0.05), randn(4 * C), randn(C, 4 * C, scale=0.05), randn(M, C)
    out, pre = gelu_fusion.linear_gelu(x, w_fc, b_fc)
    pre_ref = F.linear(x.float(), w_fc.float(), b_fc.float())
    torch.testing.assert_close(pre, pre_ref.bfloat16())
    torch.testing.assert_close(out, F.gelu(pre_ref, approximate="tanh").bfloat16())
    grad_pre = gelu_fusion.matmul_gelu_backward(grad_y, w_proj, pre)
    grad_ref = torch.ops.aten.gelu_backward(grad_y.float() @ w_proj.float(), pre.float(), approximate="tanh")
    torch.testing.assert_close(grad_pre, grad_ref.bfloat16())
    torch.testing.assert_close(gelu_fusion.column_sum(grad_pre), grad_pre.double().sum(0).bfloat16())  # b_fc's gradient
    torch.library.opcheck(torch.ops.ds_train.column_sum, (grad_pre,))
    # column_sum gives the same bits on every call, wherever the gradient lies: cuBLAS may split a long sum, and an
    # algorithm that added its splits by atomics would not (d48's micro-batch shape, the one it is there for)
    grad_d48 = randn(16384, 6400)
    moved = torch.empty(grad_d48.numel() + 64, device="cuda", dtype=torch.bfloat16)[64:].view_as(grad_d48)
    moved.copy_(grad_d48)
    first = gelu_fusion.column_sum(grad_d48)
    assert all(torch.equal(gelu_fusion.column_sum(g), first) for g in (grad_d48, moved) * 10)

    model = GPT(config_from_descriptor("gpt2:d2:c64:h2")).cuda().bfloat16()
    idx = torch.randint(0, 50257, (4, 64), device="cuda", generator=gen)
    assert_levels_agree(model, idx, model.set_gelu_fusion, 0, 2)
    for recompute in (1, 2):  # GELU's output (and at 2 the LayerNorms') dropped in forward, computed again in backward
        model.set_recompute(recompute)
        assert_levels_agree(model, idx, model.set_gelu_fusion, 0, 2)


def assert_levels_agree(model, idx, set_level, base, level):
    """The model's loss and gradients on idx at `level` against those at `base` (both set by set_level): the
    loss within 2e-2, each gradient within 2% of the base's norm (what bf16 kernels of a different design
    allow)."""
    results = []
    for each in (base, level):
        set_level(each)
        model.zero_grad()
        loss = model(idx, idx.roll(-1, 1))
        loss.backward()
        results.append((loss.item(), [p.grad.float().clone() for p in model.parameters()]))
    (loss0, grads0), (loss1, grads1) = results
    assert loss1 == pytest.approx(loss0, abs=2e-2)
    for g0, g1 in zip(grads0, grads1):
        assert (g1 - g0).norm() <= 0.02 * g0.norm() + 1e-6


def test_flash_attention_ops_pass_torchs_custom_op_checks():
    """The fake (shape) functions, the autograd registration and the schema, as torch.compile relies on them."""
    qkv = torch.randn(2, 16, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.ds_train.flash_attention_qkv, (qkv,))
    out, lse = flash_attention.attention_qkv(qkv.detach())
    torch.library.opcheck(torch.ops.ds_train.flash_attention_qkv_backward,
                          (qkv.detach(), out, lse, torch.randn_like(out)))


def test_flash_attention_gives_sdpas_loss_and_gradients(monkeypatch):
    """-fa 1 sends attention through ds_train.flash_attention (two custom ops: q/k/v read from the c_attn
    output in place, their gradients written into one buffer). On CPU the ops do the arithmetic written out,
    so the loss and every gradient must be SDPA's: eagerly, compiled whole without a graph break and block by
    block, and at -r 1 and 2, which must keep the op's outputs rather than run it again in backward. Eval mode
    (evaluation, sampling) runs SDPA."""
    import torch._dynamo
    model = GPT(config_from_descriptor("gpt2:d2:c64:h2"))
    plain = loss_and_grads(model)
    model.set_flash_attention(1)
    assert all(block.attn.flash_attention == 1 for block in model.transformer.h)
    calls = []
    reference = flash_attention._reference_forward
    monkeypatch.setattr(flash_attention, "_reference_forward", lambda *a: calls.append(1) or reference(*a))
    assert_same(loss_and_grads(model), plain)
    assert len(calls) == 2  # one per block
    torch._dynamo.reset()
    assert_same(loss_and_grads(model, torch.compile(model, fullgraph=True)), plain)
    model.set_compile(True)
    assert_same(loss_and_grads(model), plain)
    model.set_compile(False)
    for level in (1, 2):
        model.set_recompute(level)
        calls.clear()
        assert_same(loss_and_grads(model), plain)
        assert len(calls) == 2, f"-r {level} ran the attention op again in backward"
    model.set_recompute(0)
    model.eval()
    calls.clear()
    with torch.no_grad():
        assert model(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 50257)
    assert calls == []
    model.train()
    model.set_flash_attention(0)
    assert loss_and_grads(model)[0] == plain[0] and calls == []
    with pytest.raises(ValueError, match="one of \\[0, 1\\], got 2"):
        model.set_flash_attention(2)


def test_flash_attention_forward_tiles_are_128_by_128_on_hopper_up_to_1024_tokens():
    """ds_train's one departure from flash-attn-4's own tile choice: where it was measured faster (Hopper, head
    size 64, T <= 1024) and nowhere else, so longer sequences, bigger heads and other GPUs keep the default."""
    hopper, blackwell = (9, 0), (10, 0)
    assert [flash_attention.forward_tile_mn(T, 64, hopper) for T in (128, 512, 1024)] == [(128, 128)] * 3
    assert [flash_attention.forward_tile_mn(T, 64, hopper) for T in (1025, 1536, 2048, 4096)] == [None] * 4
    assert flash_attention.forward_tile_mn(1024, 128, hopper) is None
    assert flash_attention.forward_tile_mn(1024, 64, blackwell) is None


@pytest.mark.skipif(flash_attention.unavailable_reason() is not None,
                    reason=f"FlashAttention-4: {flash_attention.unavailable_reason()}")
def test_cudnns_forward_feeds_flash_attention_4s_backward_as_its_own_forward_does():
    """On Hopper -fa 1's forward is cuDNN's (the faster kernel there) and its backward FlashAttention-4's: the two
    forwards agree (their outputs to bf16, their log-sum-exps to float32's rounding), and the backward gives the same
    q/k/v gradients from either's output and log-sum-exp."""
    if torch.cuda.get_device_capability()[0] != 9:
        assert flash_attention.cudnn_forward(*torch.zeros(1, 16, 3, 1, 64, device="cuda").unbind(2)) is None
        pytest.skip("cuDNN's forward is -fa 1's on Hopper only")
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, T, H, D = 4, 1024, 6, 64
    qkv = torch.randn(B, T, 3, H, D, device="cuda", generator=gen).bfloat16()
    grad_out = torch.randn(B, T, H, D, device="cuda", generator=gen).bfloat16()
    out_cudnn, lse_cudnn = flash_attention.cudnn_forward(*qkv.unbind(2))
    out_fa4, lse_fa4 = flash_attention.flash_attention_4_forward(*qkv.unbind(2))
    assert out_cudnn.shape == out_fa4.shape and out_cudnn.is_contiguous()
    assert lse_cudnn.shape == lse_fa4.shape == (B, H, T) and lse_cudnn.is_contiguous()
    assert (lse_cudnn - lse_fa4).abs().max() <= 1e-4
    assert (out_cudnn - out_fa4).float().abs().max() <= 1e-2 * out_fa4.float().abs().max()
    grad_cudnn, grad_fa4 = (flash_attention.attention_qkv_backward(qkv, out, lse, grad_out)
                            for out, lse in ((out_cudnn, lse_cudnn), (out_fa4, lse_fa4)))
    assert (grad_cudnn - grad_fa4).float().norm() <= 1e-2 * grad_fa4.float().norm()
    assert torch.equal(flash_attention.attention_qkv(qkv)[1], lse_cudnn)  # the op's forward is cuDNN's here


@pytest.mark.skipif(flash_attention.unavailable_reason() is not None,
                    reason=f"FlashAttention-4: {flash_attention.unavailable_reason()}")
@pytest.mark.parametrize("T", [512, 2048])  # ds_train's forward tiles, then flash-attn-4's own
def test_flash_attention_kernels_match_sdpa_on_the_gpu(T):
    """FlashAttention-4's output and q/k/v gradients (written into one strided buffer) against SDPA's in bf16,
    and the bf16 model's loss and gradients at -fa 1 against -fa 0."""
    import torch.nn.functional as F
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, H, D = 4, 6, 64
    qkv = torch.randn(B, T, 3 * H * D, device="cuda", generator=gen).bfloat16().requires_grad_()
    grad_y = torch.randn(B, T, H * D, device="cuda", generator=gen).bfloat16()
    q, k, v = qkv.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
    y_ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, H * D)
    g_ref, = torch.autograd.grad(y_ref, qkv, grad_y)
    y = flash_attention.causal_attention(qkv, H)
    g, = torch.autograd.grad(y, qkv, grad_y)
    assert g.is_contiguous() and g.shape == qkv.shape
    assert (y - y_ref).float().abs().max() <= 1e-2 * y_ref.float().abs().max()
    for part in range(3):  # dq, dk, dv each in its own third of the row
        ref, got = (t.view(B, T, 3, H * D)[:, :, part].float() for t in (g_ref, g))
        assert (got - ref).norm() <= 1e-2 * ref.norm()

    model = GPT(config_from_descriptor("gpt2:d2:c128:h2")).cuda().bfloat16()
    idx = torch.randint(0, 50257, (4, 256), device="cuda", generator=gen)
    assert_levels_agree(model, idx, model.set_flash_attention, 0, 1)
