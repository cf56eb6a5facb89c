"""Flags and the DeepSpeed JSON: every llm.c flag accepted, one source of truth per setting, clear errors."""

import json
import os

import pytest
import torch

from conftest import REPO
from ds_train import config
from ds_train.errors import UserError


def write_json(tmp_path, content, name="ds.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def resolve(tmp_path, argv, ds=None, world=1, gpu=False):
    path = write_json(tmp_path, ds if ds is not None else {})
    return config.resolve(config.parse_args(["--ds_config", path, *argv]), world, gpu)


LLMC_FLAGS = {  # llm.c letter -> (long name, a value to pass, the parsed value)
    "-i": ("--train_data", "a/*.bin", "a/*.bin"), "-j": ("--val_data", "b/*.bin", "b/*.bin"),
    "-e": ("--init", "d24", "d24"), "-o": ("--output_dir", "out", "out"), "-n": ("--checkpoint_every", "5", 5),
    "-nk": ("--checkpoints_keep", "3", 3), "-nm": ("--major_checkpoint_every", "100", 100),
    "-y": ("--resume", "1", 1), "-b": ("--micro_batch_size", "8", 8), "-t": ("--seq_len", "512", 512),
    "-d": ("--total_batch_size", "65536", 65536), "-x": ("--max_steps", "100", 100),
    "-k": ("--lr_schedule", "wsd", "wsd"), "-l": ("--learning_rate", "6e-4", 6e-4),
    "-u": ("--warmup_steps", "700", 700), "-q": ("--final_lr_frac", "0.1", 0.1),
    "-c": ("--weight_decay", "0.1", 0.1), "-sl": ("--skip_loss_z", "5", 5.0), "-sg": ("--skip_grad_z", "6", 6.0),
    "-v": ("--val_every", "250", 250), "-m": ("--val_max_steps", "-1", -1), "-s": ("--sample_every", "0", 0),
    "-g": ("--gen_tokens", "144", 144), "-h": ("--hellaswag", "1", 1), "-a": ("--overfit_single_batch", "1", 1),
    "-z": ("--zero_stage", "3", 3), "-r": ("--recompute", "2", 2), "-ge": ("--gelu_fusion", "1", 1),
    "-f": ("--tf32", "0", 0),
}


@pytest.mark.parametrize("short", LLMC_FLAGS)
def test_every_llmc_flag_has_its_letter_and_a_long_name(short):
    long, value, parsed = LLMC_FLAGS[short]
    dest = long[2:]
    assert getattr(config.parse_args(["--ds_config", "x", short, value]), dest) == parsed
    assert getattr(config.parse_args(["--ds_config", "x", long, value]), dest) == parsed


def test_multi_letter_flags_do_not_collide_with_single_letters():
    args = config.parse_args(["--ds_config", "x", "-n", "7", "-nk", "2", "-nm", "9", "-s", "3", "-sl", "4", "-sg", "5",
                              "-g", "10", "-ge", "2"])
    assert (args.checkpoint_every, args.checkpoints_keep, args.major_checkpoint_every) == (7, 2, 9)
    assert (args.sample_every, args.skip_loss_z, args.skip_grad_z, args.gen_tokens, args.gelu_fusion) == (3, 4.0, 5.0, 10, 2)


def test_deepspeed_launcher_local_rank_is_accepted():
    assert config.parse_args(["--local_rank=3", "--ds_config", "x"]).local_rank == 3


def test_defaults_are_llmc_s(tmp_path):
    run, ds, notes = resolve(tmp_path, [], world=2)
    assert (run.B, run.T, run.total_batch_size, run.grad_accum) == (4, 1024, 4 * 1024 * 2, 1)
    assert (run.learning_rate, run.weight_decay, run.lr_schedule, run.final_lr_frac, run.warmup_steps) == (3e-4, 0.0, "cosine", 1.0, 0)
    assert (run.val_every, run.val_max_steps, run.sample_every, run.gen_tokens, run.max_steps) == (20, 20, 20, 64, -1)
    assert (run.zero_stage, run.recompute, run.init, run.shuffle) == (0, 0, "d12", True)
    assert run.train_data.endswith("tiny_shakespeare_train.bin") and notes == []
    assert ds["optimizer"] == {"type": "AdamW", "params": {"betas": [0.9, 0.95], "eps": 1e-8, "lr": 3e-4, "weight_decay": 0.0,
                                                           "torch_adam": True}}  # no GPU here: see below
    assert ds["gradient_clipping"] == 1.0


@pytest.mark.parametrize("argv, ds, gpu, torch_adam", [
    ([], {}, False, True),  # CPU: torch's AdamW, no JIT build of DeepSpeed's FusedAdam
    (["-z", "1"], {}, True, None),  # GPU: FusedAdam
    (["-z", "2", "--offload", "optimizer"], {}, False, None),  # offload: DeepSpeed's CPU Adam, as on a GPU machine
    ([], {"optimizer": {"type": "AdamW", "params": {"torch_adam": False}}}, False, False),  # the JSON's word
])
def test_which_adamw_deepspeed_builds(tmp_path, argv, ds, gpu, torch_adam):
    _, effective, _ = resolve(tmp_path, argv, ds=ds, gpu=gpu)
    assert effective["optimizer"]["params"].get("torch_adam") == torch_adam


def test_gradient_accumulation_follows_the_total_batch_and_world_size(tmp_path):
    for world, accum in ((1, 8), (2, 4), (8, 1)):
        run, ds, _ = resolve(tmp_path, ["-b", "64", "-t", "1024", "-d", "524288"], world=world)
        assert run.grad_accum == accum
        assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (64, accum, 512)


def test_json_values_apply_when_no_flag_is_given(tmp_path):
    ds_json = {"train_micro_batch_size_per_gpu": 16, "train_batch_size": 64, "zero_optimization": {"stage": 2, "overlap_comm": True},
               "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.1}}, "bf16": {"enabled": False}}
    run, ds, notes = resolve(tmp_path, ["-t", "128"], ds_json, world=2)
    assert (run.B, run.total_batch_size, run.grad_accum, run.zero_stage) == (16, 64 * 128, 2, 2)
    assert (run.learning_rate, run.weight_decay) == (1e-3, 0.1)
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True} and notes == []


@pytest.mark.parametrize("ds_json, argv, B, accum, notes", [
    # DeepSpeed's readings of two of its three fields, on 2 ranks
    ({"gradient_accumulation_steps": 4}, [], 4, 4, []),  # with ds_train's default micro-batch
    ({"gradient_accumulation_steps": 4}, ["-b", "2"], 2, 4, []),
    ({"train_batch_size": 32, "gradient_accumulation_steps": 2}, [], 8, 2, []),  # micro = 32 / (2 x 2 ranks)
    ({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 3}, [], 4, 3, []),
    # a flag changes the accumulation that the JSON gave: said, not silent
    ({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, ["-b", "8"], 8, 1,
     ["-b 8 overrides train_micro_batch_size_per_gpu = 4 from the JSON",
      "gradient accumulation 1 (-d / (B*T*world) = 512 / (8*32*2)) replaces gradient_accumulation_steps = 2 from the JSON"]),
    # written for 8 ranks, its fields disagree on 2, but -b and -d replace them all
    ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1}, ["-b", "4", "-d", "512"], 4, 2,
     ["-b 4 overrides train_micro_batch_size_per_gpu = 8 from the JSON", "-d 512 overrides train_batch_size x T = 2048 from the JSON",
      "gradient accumulation 2 (-d / (B*T*world) = 512 / (4*32*2)) replaces gradient_accumulation_steps = 1 from the JSON"]),
])
def test_the_jsons_gradient_accumulation_is_kept_or_its_change_said(tmp_path, ds_json, argv, B, accum, notes):
    run, ds, said = resolve(tmp_path, ["-t", "32", "-z", "1", *argv], ds_json, world=2)
    assert (run.B, run.grad_accum, run.total_batch_size) == (B, accum, B * accum * 32 * 2)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (B, accum) and said == notes


@pytest.mark.parametrize("argv, note", [
    (["-k", "constant", "-u", "5", "-q", "0.1"], "-u 5 and -q 0.1 unused: -k constant has no warmup and no decay"),
    (["-k", "constant", "-q", "0.1"], "-q 0.1 unused: -k constant has no warmup and no decay"),
    (["-s", "0", "-g", "10"], "-g 10 unused: -s 0 samples no text"),
    (["-n", "2", "-o", "out", "-nm", "4"], "-nm 4 unused: -nk 0 keeps every checkpoint"),
    (["-k", "cosine", "-u", "5", "-q", "0.1", "-s", "5", "-g", "10"], None),
])
def test_flags_the_run_never_reads_are_said(tmp_path, argv, note):
    _, _, notes = resolve(tmp_path, argv)
    assert notes == ([note] if note else [])


def test_flags_win_over_the_json_and_say_so(tmp_path):
    ds_json = {"train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": 2},
               "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    run, ds, notes = resolve(tmp_path, ["-b", "8", "-z", "1", "-l", "5e-4", "-t", "64"], ds_json)
    assert (run.B, run.zero_stage, run.learning_rate) == (8, 1, 5e-4)
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["zero_optimization"]["stage"] == 1
    assert ds["optimizer"]["params"]["lr"] == 5e-4
    assert notes == ["-b 8 overrides train_micro_batch_size_per_gpu = 16 from the JSON",
                     "-z 1 overrides zero_optimization.stage = 2 from the JSON",
                     "-l 0.0005 overrides optimizer.params.lr = 0.001 from the JSON"]


def test_recompute_from_the_json_section_or_the_flag(tmp_path):
    section = {"activation_checkpointing": {"cpu_checkpointing": False}}
    run, ds, _ = resolve(tmp_path, [], section)
    assert run.recompute == 3 and ds["activation_checkpointing"]["partition_activations"] is False
    run, ds, notes = resolve(tmp_path, ["-r", "1"], section)
    assert run.recompute == 1 and "activation_checkpointing" not in ds and "-r 1 overrides" in notes[0]
    run, ds, _ = resolve(tmp_path, ["-r", "3"])
    assert run.recompute == 3 and ds["activation_checkpointing"] == config.ACTIVATION_CHECKPOINTING_DEFAULTS
    for level in ("1", "2"):  # eager: recompute (GELU, LayerNorm) calls no linear
        run, ds, _ = resolve(tmp_path, ["-r", level, "-z", "3", "--compile", "0"])
        assert run.recompute == int(level) and "memory_efficient_linear" not in ds["zero_optimization"]


def test_precision(tmp_path):
    assert resolve(tmp_path, ["-z", "1"], {}, gpu=True)[0].bf16 is True  # auto: bf16 on GPU
    assert resolve(tmp_path, [], {}, gpu=False)[0].bf16 is False
    run, ds, _ = resolve(tmp_path, ["-z", "1"], {"bf16": {"enabled": True}})
    assert run.bf16 and ds["bf16"]["enabled"] is True and ds["data_types"] == {"grad_accum_dtype": "fp32"}
    assert resolve(tmp_path, [], {"bf16": {"enabled": False}}, gpu=True)[0].bf16 is False
    # DeepSpeed's old name for the section is read as "bf16", not passed over for the GPU default
    run, ds, _ = resolve(tmp_path, ["-z", "1"], {"bfloat16": {"enabled": False}}, gpu=True)
    assert run.bf16 is False and ds["bf16"]["enabled"] is False and "bfloat16" not in ds


def test_deepspeed_s_bf16_overflow_scan_is_off_unless_the_json_asks(tmp_path):
    # the guard finds non-finite gradients through the norm (test_faults); the JSON may still turn the scan on
    assert resolve(tmp_path, ["-z", "2"], {"bf16": {"enabled": True}})[1]["bf16"]["check_grad_overflow"] is False
    asked = {"bf16": {"enabled": True, "check_grad_overflow": True}}
    assert resolve(tmp_path, ["-z", "2"], asked)[1]["bf16"]["check_grad_overflow"] is True
    assert "check_grad_overflow" not in resolve(tmp_path, ["-z", "2"], {"bf16": {"enabled": False}})[1]["bf16"]


def test_deepspeed_s_synchronizing_throughput_timer_is_off_unless_the_json_asks(tmp_path):
    assert resolve(tmp_path, [])[1]["timers"] == {"throughput": {"enabled": False}}
    asked = {"timers": {"throughput": {"enabled": True, "synchronized": False}}}
    assert resolve(tmp_path, [], asked)[1]["timers"] == asked["timers"]


def test_compile_defaults_to_the_gpu_and_uses_torch_s_linear_at_zero3(tmp_path):
    assert resolve(tmp_path, ["-z", "1"], {}, gpu=True)[0].compile is True
    assert resolve(tmp_path, [], {}, gpu=False)[0].compile is False
    run, ds, _ = resolve(tmp_path, ["--compile", "1", "-z", "3"])
    assert run.compile and ds["zero_optimization"]["memory_efficient_linear"] is False
    assert "memory_efficient_linear" not in resolve(tmp_path, ["--compile", "0", "-z", "3"])[1]["zero_optimization"]
    with pytest.raises(UserError, match=r"memory_efficient_linear true gives wrong gradients with --compile 1 at ZeRO-3"):
        resolve(tmp_path, ["-z", "3"], {"zero_optimization": {"memory_efficient_linear": True}}, gpu=True)
    with pytest.raises(UserError, match=r"--compile 2: expected 0 or 1"):
        resolve(tmp_path, ["--compile", "2"])


def test_offload_from_the_flag_or_the_json(tmp_path):
    run, ds, _ = resolve(tmp_path, ["-z", "2", "--offload", "optimizer"])
    assert run.offload == "optimizer" and ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert "offload_param" not in ds["zero_optimization"]
    json_all = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": False},
                                      "offload_param": {"device": "cpu", "buffer_count": 4}}}
    run, ds, _ = resolve(tmp_path, [], json_all)
    assert run.offload == "all" and ds["zero_optimization"]["offload_param"] == {"device": "cpu", "buffer_count": 4, "pin_memory": True}
    assert ds["zero_optimization"]["offload_optimizer"]["pin_memory"] is False  # the JSON's own setting stays
    run, ds, notes = resolve(tmp_path, ["--offload", "none"], json_all)  # the flag wins, and says so
    assert run.offload == "none" and not {"offload_optimizer", "offload_param"} & set(ds["zero_optimization"])
    assert any(n.startswith("--offload none overrides") for n in notes)
    assert resolve(tmp_path, ["-z", "3"], {"zero_optimization": {"offload_param": {"device": "cpu"}}})[0].offload == "params"
    assert resolve(tmp_path, ["-z", "1"], {"zero_optimization": {"offload_optimizer": {"device": "none"}}})[0].offload == "none"
    nvme = str(tmp_path)
    run, ds, _ = resolve(tmp_path, ["-z", "3", "--offload", "all", "--offload_nvme", nvme])
    assert run.offload_nvme == nvme and all(ds["zero_optimization"][k] == {"device": "nvme", "nvme_path": nvme, "pin_memory": True}
                                            for k in ("offload_optimizer", "offload_param"))


def test_overfit_trains_on_val_without_shuffling(tmp_path):
    run, _, _ = resolve(tmp_path, ["-a", "1", "-j", "v.bin", "-i", "t.bin"])
    assert run.train_data == "v.bin" and run.shuffle is False


@pytest.mark.parametrize("argv, ds, message", [
    (["-d", "1000", "-b", "4", "-t", "64"], {}, r"-d 1000: the total batch must be a positive multiple of B\*T\*world = 4\*64\*2 = 512"),
    (["-t", "2048", "-e", "d12"], {}, r"-t 2048: the sequence length must be between 1 and the model's 1024 \(-e d12\)"),
    (["-b", "0"], {}, r"-b 0: the micro-batch must be at least 1"),
    (["-z", "4"], {}, r"-z 4: the ZeRO stage must be 0, 1, 2 or 3"),
    (["-r", "5"], {}, r"-r 5: recompute must be one of 0 \(none\), 1 \(GELU\)"),
    (["-k", "step"], {}, r"-k step: unknown schedule; expected one of cosine, linear, constant, wsd"),
    (["-q", "1.5"], {}, r"-q 1.5: the final lr fraction must be between 0 and 1"),
    (["-l", "0"], {}, r"-l 0.0: the learning rate must be a finite number > 0"),
    (["-v", "-1"], {}, r"-v -1: expected an interval >= 1, or 0 \(val loss at the last step only\)"),
    (["-m", "0"], {}, r"-m 0: val batches must be -1 \(all\) or >= 1"),
    (["-x", "0"], {}, r"-x 0: max steps must be -1 \(one epoch\) or >= 1"),
    (["-e", "d13"], {}, r"-e d13: no GPT-2 size has 13 layers"),
    (["-e", "gpt2_124M.bin"], {}, r"^gpt2_124M.bin: cannot read: No such file or directory$"),
    (["-e", "some/folder"], {}, r"^-e some/folder: expected an llm.c model .bin, a Hugging Face GPT-2 folder or a ds_train checkpoint$"),
    (["-h", "1", "--hellaswag_data", "nope.jsonl"], {}, r"--hellaswag_data nope.jsonl: no such file \(prepare it with python -m ds_train.prepare hellaswag\)"),
    (["-y", "1"], {}, r"-y 1: resuming needs -o, the run directory to resume"),
    (["-y", "2", "-o", "out"], {}, r"-y 2: expected 0 \(start over\) or 1 \(resume\)"),
    (["-n", "100"], {}, r"-n 100: checkpoints need -o to say where they go"),
    (["-nk", "-1"], {}, r"-nk -1: expected 0 \(keep all\) or how many to keep"),
    (["-nm", "-2"], {}, r"-nm -2: expected 0 \(none\) or a number of steps"),
    (["-sg", "-2"], {}, r"-sg -2.0: expected 0 \(off\) or a positive z-score"),
    (["--resume_new_batch", "2"], {}, r"--resume_new_batch 2: expected 0 or 1"),
    (["-sl", "-1"], {}, r"-sl -1.0: expected 0 \(off\) or a positive z-score"),
    ([], {"scheduler": {"type": "WarmupLR"}}, r"remove the \"scheduler\" section; ds_train applies llm.c's schedules"),
    ([], {"fp16": {"enabled": True}}, r"fp16 is not supported"),
    ([], {"optimizer": {"type": "SGD"}}, r"the optimizer must be AdamW"),
    ([], {"optimizer": {"type": "Adam", "params": {"adam_w_mode": False}}}, r"the optimizer must be AdamW"),
    ([], {"bf16": {"enabled": "yes"}}, r"bf16.enabled must be true, false or \"auto\""),
    (["-z", "0"], {"bf16": {"enabled": True}}, r"-z 0 with bf16 .*: bf16 needs ZeRO stage 1, 2 or 3"),
    ([], {"train_batch_size": 10, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2},
     r"train_batch_size 10 != train_micro_batch_size_per_gpu 2 x gradient_accumulation_steps 2 x world size 2"),
    ([], {"train_batch_size": 10, "gradient_accumulation_steps": 2},
     r"train_batch_size 10 is not a multiple of gradient_accumulation_steps 2 x world size 2; give train_micro_batch_size_per_gpu or -b"),
    (["-t", "32"], {"train_batch_size": 3}, r"--ds_config \S+'s batch \(96 tokens at -t 32\): the total batch must be a positive multiple of B\*T\*world"),
    (["-z", "0", "--offload", "optimizer"], {}, r"--offload optimizer: offloading needs ZeRO \(-z 1, 2 or 3\)"),
    (["-z", "2", "--offload", "all"], {}, r"--offload all: offloading the parameters needs -z 3 .*got -z 2; use --offload optimizer"),
    (["-z", "2"], {"zero_optimization": {"offload_param": {"device": "cpu"}}}, r"--offload params: offloading the parameters needs -z 3"),
    (["-z", "2", "--offload", "cpu"], {}, r"--offload cpu: expected none, optimizer or all"),
    (["-z", "3", "--offload_nvme", "."], {}, r"--offload_nvme \.: say what goes there with --offload optimizer or all"),
    (["-z", "2", "--offload", "optimizer", "--offload_nvme", "."], {}, r"DeepSpeed offloads to NVMe at ZeRO-3 only, got -z 2"),
    (["-z", "3", "--offload", "all", "--offload_nvme", "/no/such/dir"], {}, r"--offload_nvme /no/such/dir: not a writable directory"),
    ([], {"zero_optimization": {"offload_optimizer": {"device": "gpu"}}}, r"offload_optimizer must be an object with \"device\": \"cpu\""),
    (["--gpu_memory", "40"], {}, r"--gpu_memory 40: only --auto_fit 1 plans with it"),
    (["--host_memory", "100"], {}, r"--host_memory 100: only --auto_fit 1 plans with it"),
    (["--auto_fit", "1", "--host_memory", "0"], {}, r"--host_memory 0: expected GiB > 0"),
    (["--auto_fit", "2"], {}, r"--auto_fit 2: expected 0 or 1"),
    (["-ge", "3"], {}, r"-ge 3: expected -1 \(default\), 0, 1 or 2"),
    (["-fa", "2"], {}, r"-fa 2: expected -1 \(default\), 0 or 1"),
    ([], {"activation_checkpointing": {"cpu_checkpointing": True}},
     r"activation_checkpointing.cpu_checkpointing needs partition_activations: true too"),
    ([], {"bf16": True}, r"\"bf16\" must be an object, got True"),
    ([], {"bf16": {"enabled": True}, "bfloat16": {"enabled": False}}, r"both \"bf16\" and \"bfloat16\" \(its old name\); keep one"),
    ([], {"bfloat16": True}, r"\"bfloat16\" must be an object, got True"),
    ([], {"zero_optimization": 2}, r"\"zero_optimization\" must be an object, got 2"),
    ([], {"train_micro_batch_size_per_gpu": "16"}, r"train_micro_batch_size_per_gpu must be a positive integer, got '16'"),
    ([], {"zero_optimization": {"stage": "3"}}, r"zero_optimization.stage must be 0, 1, 2 or 3, got '3'"),
    ([], {"optimizer": {"type": "AdamW", "params": {"lr": "1e-3"}}}, r"optimizer.params.lr must be a number, got '1e-3'"),
    ([], {"optimizer": {"type": "AdamW", "params": {"betas": [0.9]}}}, r"optimizer.params.betas must be two numbers in \[0, 1\), got \[0.9\]"),
    ([], {"optimizer": {"type": "AdamW", "params": {"eps": 0}}}, r"optimizer.params.eps must be a number > 0, got 0"),
    (["--hellaswag_data", "hs.jsonl"], {}, r"--hellaswag_data hs.jsonl: only -h 1 reads it"),
    (["--resume_new_batch", "1"], {}, r"--resume_new_batch 1: only -y 1 uses it"),
    ([], {"train_micro_batch_size_per_gpus": 8}, r"unknown key \"train_micro_batch_size_per_gpus\"; did you mean \"train_micro_batch_size_per_gpu\"\?"),
    ([], {"zero_optimisation": {"stage": 2}}, r"unknown key \"zero_optimisation\"; did you mean \"zero_optimization\"\?"),
    ([], {"gradient_clipping": "x"}, r"gradient_clipping must be a number >= 0 \(0: no clipping\), got 'x'"),
    # found by a review of 2026-12-06: each of these once reached deepspeed.initialize or ran on silently
    (["-l", "inf"], {}, r"-l inf: the learning rate must be a finite number > 0"),
    (["-c", "inf"], {}, r"-c inf: weight decay must be a finite number >= 0"),
    # the JSON's values are named as the JSON's (they were reported as -l and -c, flags the command line never had)
    ([], {"optimizer": {"type": "AdamW", "params": {"lr": -1}}},
     r"--ds_config .*ds.json: optimizer.params.lr = -1: the learning rate must be a finite number > 0"),
    ([], {"optimizer": {"type": "AdamW", "params": {"weight_decay": -0.1}}},
     r"--ds_config .*ds.json: optimizer.params.weight_decay = -0.1: weight decay must be a finite number >= 0"),
    (["-nk", "2"], {}, r"-nk 2: only -n N \(checkpoint every N steps\) reads it"),
    (["-nm", "5", "-o", "out"], {}, r"-nm 5: only -n N \(checkpoint every N steps\) reads it"),
    (["-f", "2"], {}, r"-f 2: expected 0 or 1"),
    ([], {"optimizer": {"type": "AdamW", "params": {"weight_decy": 0.1}}},
     r"optimizer.params.weight_decy is not a setting of ds_train's AdamW \(did you mean \"weight_decay\"\?\)"),
    ([], {"optimizer": {"type": "AdamW", "params": {"amsgrad": True}}},
     r"optimizer.params.amsgrad is not a setting of ds_train's AdamW \(it takes lr, betas, eps, weight_decay, torch_adam, adam_w_mode\)"),
    ([], {"amp": {"enabled": True}}, r"\"amp\" \(NVIDIA Apex mixed precision\) is not supported"),
    ([], {"wandb": {"enabled": True}}, r"wandb.enabled needs the wandb package, which is not installed \(pip install wandb\)"),
    ([], {"csv_monitor": 1}, r"\"csv_monitor\" must be an object, got 1"),
    ([], {"tensorbaord": {"enabled": True}}, r"unknown key \"tensorbaord\"; did you mean \"tensorboard\"\?"),
    (["-z", "1"], {"zero_optimization": {"offload_optimizer": {"device": "nvme"}}},
     r"zero_optimization.offload_optimizer has \"device\": \"nvme\" without \"nvme_path\""),
])
def test_bad_settings_get_one_line_errors(tmp_path, argv, ds, message):
    with pytest.raises(UserError, match=message) as err:
        resolve(tmp_path, argv, ds, world=2)
    assert "\n" not in str(err.value)


def test_flags_match_only_as_written():
    """argparse read llm.c's -f 1 as -fa 1 (a prefix of a longer short flag) and -lg 100 as -l g (a value glued
    to a short flag): an llm.c flag ds_train lacks must be refused, not run as another one."""
    for argv, unknown in ((["-fa", "1", "-lg", "100"], "-lg 100"), (["-l0.1"], "-l0.1"), (["-g", "8", "-ge0"], "-ge0")):
        with pytest.raises(UserError, match=f"unrecognized arguments: {unknown}"):
            config.parse_args(["--ds_config", "x", *argv])
    assert config.parse_args(["--ds_config", "x", "-f", "0", "-x", "-1"]).tf32 == 0  # negative values still parse


@pytest.mark.parametrize("monitor", ["tensorboard", "csv_monitor"])
def test_a_monitor_folder_that_cannot_be_made_is_refused(tmp_path, monitor):
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("")
    for output_path in (a_file, a_file / "runs"):
        with pytest.raises(UserError, match=f"{monitor}.output_path '{output_path}': expected a folder that can be written or made"):
            resolve(tmp_path, [], {monitor: {"enabled": True, "output_path": str(output_path)}})
    run, ds, _ = resolve(tmp_path, [], {monitor: {"enabled": True, "output_path": str(tmp_path / "new" / "runs")}})
    assert ds[monitor]["output_path"] == str(tmp_path / "new" / "runs")  # passed on to DeepSpeed, which makes it
    assert not (tmp_path / "new").exists()


def test_duplicate_json_keys_are_refused(tmp_path):
    path = write_json(tmp_path, '{"zero_optimization": {"stage": 1, "stage": 3}}')
    with pytest.raises(UserError, match=r"the key \"stage\" appears twice in one object; keep one"):
        config.resolve(config.parse_args(["--ds_config", path]), 1, False)


def test_nvme_offload_from_the_json_takes_its_folder_from_the_flag(tmp_path):
    run, ds, _ = resolve(tmp_path, ["-z", "3", "--offload_nvme", str(tmp_path)],
                         {"zero_optimization": {"offload_optimizer": {"device": "nvme"}}})
    assert (run.offload, run.offload_nvme) == ("optimizer", str(tmp_path))
    assert ds["zero_optimization"]["offload_optimizer"]["nvme_path"] == str(tmp_path)


def test_tf32_flag_notes_where_nothing_reads_it(tmp_path):
    assert any("-f 0 unused" in note for note in resolve(tmp_path, ["-f", "0"])[2])  # CPU
    run, _, notes = resolve(tmp_path, ["-f", "0"], {"bf16": {"enabled": False}}, gpu=True)
    assert run.tf32 is False and not any("-f 0" in note for note in notes)  # fp32 on a GPU: TF32 off
    assert resolve(tmp_path, ["-z", "1"], gpu=True)[0].tf32 is True


@pytest.mark.parametrize("content, message", [
    ("{ not json", r"ds.json: invalid JSON at line 1 column 3"),
    ("[1, 2]", r"ds.json: expected a JSON object at the top level"),
])
def test_bad_json_files(tmp_path, content, message):
    path = write_json(tmp_path, content)
    with pytest.raises(UserError, match=f"--ds_config .*{message}"):
        config.resolve(config.parse_args(["--ds_config", path]), 1, False)


def test_missing_json_file(tmp_path):
    with pytest.raises(UserError, match=r"--ds_config .*nope.json: no such file"):
        config.resolve(config.parse_args(["--ds_config", str(tmp_path / "nope.json")]), 1, False)


def test_unknown_flags_and_bad_values_are_user_errors():
    with pytest.raises(UserError, match=r"unrecognized arguments: --bogus"):
        config.parse_args(["--ds_config", "x", "--bogus", "1"])
    with pytest.raises(UserError, match=r"argument -b/--micro_batch_size: invalid int value: 'four'"):
        config.parse_args(["--ds_config", "x", "-b", "four"])


def test_without_ds_config_a_run_takes_the_shipped_small_run_json():
    """As llm.c's train_gpt2cu runs without flags: ds_configs/quickstart.json, found from the code, not the folder."""
    path = config.parse_args([]).ds_config
    assert path == os.path.join(REPO, "ds_configs", "quickstart.json") and os.path.isfile(path)
    run, ds_config, _ = config.resolve(config.parse_args(["-b", "4", "-t", "64"]), 1, False)
    assert ds_config["zero_optimization"]["stage"] == 1 and run.ds_config_path == path and not run.bf16


@pytest.mark.parametrize("name", ["gpt2_124M", "gpt2_350M", "gpt2_774M", "gpt2_1558M", "gpt3_125M", "gpt3", "quickstart"])
def test_shipped_configs_resolve_to_llmc_batches(name):
    llmc = {"gpt2_124M": (64, 1024, 524288), "gpt2_350M": (64, 1024, 524288), "gpt2_774M": (32, 1024, 524288),
            "gpt2_1558M": (16, 1024, 1048576), "gpt3_125M": (32, 2048, 524288), "gpt3": (32, 2048, 524288),
            "quickstart": (4, 64, 4 * 64 * 8)}  # quickstart: llm.c's default B and -d = B*T*world
    B, T, total = llmc[name]
    args = config.parse_args(["--ds_config", f"ds_configs/{name}.json", "-t", str(T), "-e", "gpt3:c768" if T == 2048 else "d12"])
    run, ds, notes = config.resolve(args, 8, True)
    assert (run.B, run.total_batch_size) == (B, total) and notes == []
    assert run.zero_stage == 1 and run.bf16 and run.recompute == 0


@pytest.mark.parametrize("argv, ds, gpu, level, note", [
    (["-z", "1"], {}, True, 2, None),  # the default on a GPU (bf16 "auto" is on there)
    (["-z", "1", "-r", "3"], {}, True, 2, None),
    (["-z", "1", "-ge", "1"], {}, True, 1, None),
    (["-z", "1", "-ge", "0"], {}, True, 0, None),
    (["-z", "1", "-r", "1"], {}, True, 2, None),  # recompute keeps the fused epilogues (GELU's output is redone)
    (["-z", "1", "-r", "1", "-ge", "1"], {}, True, 1, None),
    (["-z", "1", "-r", "2"], {}, True, 2, None),  # -r 2 too (the MLP's Function recomputes GELU and the LayerNorm)
    ([], {}, False, 0, None),
    ([], {"bf16": {"enabled": False}}, True, 0, None),
    (["-ge", "2"], {}, False, 0, "-ge 2: GELU is computed unfused in this run (the fused kernels are for bf16 on a CUDA GPU)"),
    (["-z", "1", "-e", "gpt2:d2:c36:h2", "-ge", "1"], {}, True, 0, "-ge 1: GELU is computed unfused in this run (cuBLASLt wants the width C = 36 a multiple of 8)"),
])
def test_gelu_fusion_level_by_device_precision_and_recompute(tmp_path, argv, ds, gpu, level, note):
    run, _, notes = resolve(tmp_path, argv, ds, gpu=gpu)
    assert run.gelu_fusion == level
    assert [n for n in notes if n.startswith("-ge")] == ([note] if note else [])


@pytest.mark.parametrize("argv, ds, gpu, level, note", [
    (["-z", "1"], {}, True, 1, None),  # the default for bf16 on a GPU (whether the package imports: main.py)
    (["-z", "3", "-r", "1"], {}, True, 1, None),
    (["-z", "1", "-fa", "0"], {}, True, 0, None),
    ([], {}, False, 0, None),  # the default stays off where it does not apply, without a note
    ([], {"bf16": {"enabled": False}}, True, 0, None),
    (["-z", "1", "-e", "gpt2:d2:c36:h3"], {}, True, 0, None),
    (["-fa", "1"], {}, False, 0, "-fa 1: attention runs on SDPA in this run (its kernels are for bf16 on a CUDA GPU)"),
    (["-fa", "1"], {"bf16": {"enabled": False}}, True, 0,
     "-fa 1: attention runs on SDPA in this run (its kernels are for bf16 on a CUDA GPU)"),
    (["-z", "1", "-e", "gpt2:d2:c36:h3", "-fa", "1"], {}, True, 0,
     "-fa 1: attention runs on SDPA in this run (its kernels take head sizes 8-256 in multiples of 8, this model's is 12)"),
])
def test_flash_attention_level_by_device_precision_and_head_size(tmp_path, argv, ds, gpu, level, note):
    run, _, notes = resolve(tmp_path, argv, ds, gpu=gpu)
    assert run.flash_attention == level
    assert [n for n in notes if n.startswith("-fa")] == ([note] if note else [])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the kernels' absence on a CPU machine")
def test_kernel_levels_settled_where_they_cannot_run(tmp_path):
    """What config.resolve picks for a GPU, on a machine without one: a default -fa goes to 0 (no note, since
    no package would help), an explicit -fa 1 stops the run with the flag in its message. As main.py and
    bench/profile_step.py call it."""
    from ds_train.main import settle_kernels
    args = config.parse_args(["--ds_config", write_json(tmp_path, {}), "-z", "1", "-ge", "0"])
    run, _, notes = config.resolve(args, 1, True)
    assert run.flash_attention == 1
    assert settle_kernels(args, run, notes).flash_attention == 0 and notes == []
    args = config.parse_args(["--ds_config", write_json(tmp_path, {}), "-z", "1", "-ge", "0", "-fa", "1"])
    run, _, notes = config.resolve(args, 1, True)
    with pytest.raises(UserError, match=r"^-fa 1: FlashAttention-4 cannot run here: it needs a CUDA GPU; use -fa 0$"):
        settle_kernels(args, run, notes)
