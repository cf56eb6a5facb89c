"""Train GPT-2 / GPT-3 on llm.c token shards with a DeepSpeed engine.

    deepspeed --num_gpus 8 ds_train/main.py --ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 ...
    python ds_train/main.py --ds_config ds_configs/quickstart.json ...        (one process, CPU or GPU)
    mpirun -np 2 python ds_train/main.py --ds_config ...                      (ranks found through mpi4py)

Flags are llm.c's (train_gpt2cu); `--help` lists them with their long names.
"""

import atexit
import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
import time
import warnings

if __package__ in (None, ""):  # run as a script: import the package from the repo, not this folder's modules
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# DS_ACCELERATOR=cpu is how DeepSpeed keeps a job on the CPU of a GPU machine, but its launcher still hands each rank
# CUDA_VISIBLE_DEVICES=0,1,...: hide the GPUs from torch as well, before anything asks CUDA for them, so that the
# ranks train where DeepSpeed's CPU accelerator expects them to
if os.environ.get("DS_ACCELERATOR") == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch

from ds_train import (autofit, build_locks, checkpoint, config, convert, distributed, flash_attention, gelu_fusion,
                      host_memory, loss, memory, metrics, resume, weight_grad)
from ds_train.data import ShardLoader, find_shards, read_shard_header, unwritable_dir_reason, writable_dir
from ds_train.errors import UserError
from ds_train.evals import hellaswag, sample_text, val_loss, val_num_batches
from ds_train.hellaswag import check_fits, load_rendered
from ds_train.model import GPT, RECOMPUTE_LEVELS, Block
from ds_train.outliers import UpdateGuard
from ds_train.schedule import learning_rate
from ds_train.update import NormHook, fold_bf16_gradients_in_one_kernel, train_step

# DeepSpeed 0.19 still calls this deprecated torch collective on every ZeRO step; the warning is not ours to fix
warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated", category=FutureWarning)


def _cuda_arch_list_for_deepspeed():
    """DeepSpeed 0.19 cannot parse arch names such as "9.0a" in TORCH_CUDA_ARCH_LIST when it JIT-builds
    FusedAdam; hand it the plain architectures (the suffix only adds Hopper-only instructions it does not use)."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    plain = re.sub(r"(\d+\.\d+)[a-z]\b", r"\1", archs)
    if plain != archs:
        distributed.print0(f"note: TORCH_CUDA_ARCH_LIST={archs!r} -> {plain!r} for DeepSpeed's op builds")
        os.environ["TORCH_CUDA_ARCH_LIST"] = plain


@contextlib.contextmanager
def bf16_optimizer_memory_reports_off():
    """DeepSpeed 0.19's BF16_Optimizer (bf16 at ZeRO-1, the GPU's default path) forces five memory reports while it
    is built: 15 lines on rank 0 between the launch and llm.c's settings table, each after a gc.collect(). ds_train
    reports memory in its own lines, so they are left out; DeepSpeed's other output is not touched."""
    from deepspeed.runtime import bf16_optimizer

    report = getattr(bf16_optimizer, "see_memory_usage", None)
    if report is None:  # another DeepSpeed: nothing to leave out
        yield
        return
    bf16_optimizer.see_memory_usage = lambda message, force=False: report(message, force=False)
    try:
        yield
    finally:
        bf16_optimizer.see_memory_usage = report


def build_engine(run: config.RunConfig, ds_config: dict):
    import deepspeed
    import pydantic
    from deepspeed.runtime.config import DeepSpeedConfigError

    _cuda_arch_list_for_deepspeed()
    if run.offload_nvme and not deepspeed.ops.op_builder.AsyncIOBuilder().is_compatible(verbose=False):
        raise UserError(f"--offload_nvme {run.offload_nvme}: DeepSpeed's async_io op cannot be built on this machine "
                        "(it needs libaio: apt install libaio-dev); offload to CPU memory without --offload_nvme")
    model = GPT(run.model, recompute=run.recompute)
    model.set_gelu_fusion(run.gelu_fusion)
    model.set_flash_attention(run.flash_attention)
    if run.init_from_file:
        _, weights = convert.load_weights(run.init, "-e")
        model.load_state_dict(weights)
    if torch.cuda.is_available():  # fp32 matmuls on tensor cores in TF32, as llm.c does in fp32 mode unless -f 0
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = run.tf32
    model.set_compile(run.compile)
    if run.zero_stage == 3:  # gather each block's parameters at once, outside its recompute region
        deepspeed.utils.set_z3_leaf_modules(model, [Block])
    if run.recompute == 3:  # DeepSpeed parses this section but leaves applying it to the model
        ac = ds_config["activation_checkpointing"]
        deepspeed.checkpointing.configure(
            None, partition_activations=ac["partition_activations"], checkpoint_in_cpu=ac["cpu_checkpointing"],
            contiguous_checkpointing=ac["contiguous_memory_optimization"], num_checkpoints=ac.get("number_checkpoints"),
            synchronize=ac["synchronize_checkpoint_boundary"], profile=ac["profile"])
    try:
        with bf16_optimizer_memory_reports_off():
            engine, *_ = deepspeed.initialize(model=model, model_parameters=model.param_groups(run.weight_decay),
                                              config=ds_config)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        raise UserError(f"--ds_config {run.ds_config_path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    except DeepSpeedConfigError as e:  # a setting config.py does not read that DeepSpeed refuses (checkpoint.tag_validation)
        raise UserError(f"--ds_config {run.ds_config_path}: {str(e).splitlines()[0]}") from None
    if fold_bf16_gradients_in_one_kernel(engine.optimizer):  # then the blocks' weight gradients straight into fp32
        weight_grad.attach(engine.optimizer, model)
    return engine


def run_table(run: config.RunConfig, place, num_steps: int, val_batches: int, device: str) -> str:
    m = run.model
    return metrics.table([
        ("train data pattern", run.train_data), ("val data pattern", run.val_data),
        ("output log dir", run.output_dir or "none"), ("micro batch size B", run.B), ("sequence length T", run.T),
        ("total batch size", run.total_batch_size), ("LR scheduler", run.lr_schedule),
        ("learning rate (LR)", f"{run.learning_rate:e}"), ("warmup iterations", run.warmup_steps),
        ("final LR fraction", f"{run.final_lr_frac:e}"), ("weight decay", f"{run.weight_decay:e}"),
        ("max_steps", run.max_steps), ("val_loss_every", run.val_every), ("val_max_steps", run.val_max_steps),
        ("sample_every", run.sample_every), ("genT", run.gen_tokens),
        ("overfit_single_batch", int(run.overfit_single_batch)), ("shuffle", int(run.shuffle)),
        ("recompute", f"{run.recompute} ({RECOMPUTE_LEVELS[run.recompute]})"), ("torch.compile", int(run.compile)),
        ("gelu_fusion", f"{run.gelu_fusion} ({gelu_fusion.LEVELS[run.gelu_fusion]})"),
        ("flash_attention", f"{run.flash_attention} ({flash_attention.LEVELS[run.flash_attention]})"),
        (None, None),
        ("device", device), ("precision", "bf16 (fp32 master weights)" if run.bf16 else
                                                   "fp32" if device == "cpu" or not run.tf32 else "fp32 (TF32 matmuls on a GPU)"),
        ("DeepSpeed config", run.ds_config_path), (None, None),
        ("model", run.init), ("max_sequence_length T", m.block_size), ("vocab_size V", m.vocab_size),
        ("padded_vocab_size Vp", m.padded_vocab_size), ("num_layers L", m.n_layer), ("num_heads NH", m.n_head),
        ("channels C", m.n_embd), ("num_parameters", f"{m.num_params:,}"), (None, None),
        ("train_num_batches", num_steps), ("val_num_batches", val_batches), (None, None),
        ("num_processes", place.world_size), ("zero_stage", run.zero_stage),
        ("offload", run.offload + (f" (NVMe: {run.offload_nvme})" if run.offload_nvme else "")),
        ("grad_accum_steps", run.grad_accum),
    ])


def print_setup(say, run: config.RunConfig, place, num_steps, val_batches, device: str, notes: list, ds_config: dict):
    """llm.c's parameter table, the notes on flags that override the JSON, and the effective DeepSpeed config."""
    say(run_table(run, place, num_steps, val_batches, device))
    for note in notes:
        say(f"note: {note}")
    say(f"effective DeepSpeed config: {json.dumps(ds_config)}")


def warmup_notes(run: config.RunConfig, num_steps) -> list:
    """A warmup as long as the run (a reproduction script's -u with a short -x, say) is what llm.c runs too: the
    rate only rises. Said, since the schedule never decays."""
    if run.lr_schedule == "constant" or not num_steps or run.warmup_steps < num_steps:
        return []
    return [f"-u {run.warmup_steps} is not shorter than the {num_steps} steps: the learning rate only warms up, to "
            f"{num_steps / run.warmup_steps:.1%} of -l at the last step, and -k {run.lr_schedule} never decays it (as in llm.c)"]


def auto_fit(args, place, say):
    """--auto_fit 1: args with the -b -r -z --offload that fit this GPU (or --gpu_memory), chosen and explained."""
    gpu_bytes, name = None, None
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(place.local_rank % torch.cuda.device_count())
        gpu_bytes, name = properties.total_memory, properties.name
    return autofit.fit(args, place.world_size, True, gpu_bytes, name, name and metrics.peak_bf16_flops(name), say,
                       local_ranks=place.local_world_size)


def less_than_one_step(run: config.RunConfig, tokens: int, where: str = "") -> str:
    """What the run (an error) and its dry run (a note) say when the train data holds less than one step."""
    return (f"{run.train_flag} {run.train_data}: {tokens} tokens is less than one step of {run.total_batch_size} "
            f"tokens (-d){where}; give -x or more data")


def dry_run(args):
    """--dry_run N: the run as N ranks would run it, resolved and checked, with a memory estimate per GPU.
    Nothing is launched; the train shards' headers are read only to count the steps of -x -1."""
    world = args.dry_run
    if world < 1:  # before anything divides by it
        raise UserError(f"--dry_run {world}: expected a positive number of ranks to plan for")
    place = distributed.Place(0, 0, world, "dry run")
    if args.auto_fit:
        args = auto_fit(args, place, print)
    run, ds_config, notes = config.resolve(args, world, has_gpu=True)  # plans a GPU run: bf16 "auto" is on
    num_steps = run.max_steps
    if num_steps < 1:
        try:
            tokens = sum(read_shard_header(path) for path in find_shards(run.train_data, run.train_flag))
            num_steps = tokens // run.total_batch_size
            if num_steps == 0:
                notes.append(less_than_one_step(run, tokens, f" at {world} ranks"))
        except UserError as e:
            num_steps = None
            notes.append(f"{e}: the number of steps of one epoch (-x -1) is unknown until the data is prepared")
    val_batches = run.val_max_steps if run.val_max_steps > 0 else "the whole split"
    notes += warmup_notes(run, num_steps)
    if run.output_dir and (reason := unwritable_dir_reason(run.output_dir)):  # a note: the run may go elsewhere
        notes.append(f"-o {run.output_dir}: {reason} on this machine; the run would stop there")
    print_setup(print, run, place, num_steps if num_steps else "?", val_batches, "(dry run)", notes, ds_config)
    if run.output_dir and checkpoint.done_steps(run.output_dir):
        print(f"-o {run.output_dir} holds checkpoints up to step {checkpoint.done_steps(run.output_dir)[-1]}: "
              "-y 1 resumes there")
    total = f"{num_steps * run.total_batch_size / 1e9:.2f}B" if num_steps else "?"
    print(f"dry run | ranks {world} | steps {num_steps or '?'} | tokens per step {run.total_batch_size} | "
          f"micro-batch {run.B} x {run.T} | grad accumulation {run.grad_accum} | total tokens {total}")
    parts = memory.estimate(run)
    offload = f", --offload {run.offload}" if run.offload != "none" else ""
    print(f"memory per GPU (estimate; ZeRO-{run.zero_stage} over {world} ranks, -r {run.recompute}{offload}, "
          f"{'bf16' if run.bf16 else 'fp32'}) | " + " | ".join(f"{what} {size / memory.GiB:.2f} GiB" for what, size in parts))
    if run.offload != "none":
        print(f"offloaded per rank (estimate): {memory.offloaded(run) / memory.GiB:.2f} GiB of "
              f"{'NVMe under ' + run.offload_nvme if run.offload_nvme else 'CPU memory'}")


def settle_kernels(args, run: config.RunConfig, notes: list) -> config.RunConfig:
    """The run with -ge and -fa at 0 where their kernels cannot run here: config.resolve picks them from the
    GPU's kind; whether the GELU extension builds and FlashAttention-4 imports is known only by trying. An
    explicit level that cannot run is an error; a default one goes to 0 with a note. The loss's CUDA kernel is
    built here too (no flag: where it does not build, the Triton kernel it replaces runs, with a note)."""
    if run.gelu_fusion and (error := gelu_fusion.build_error()):  # JIT-built once, then loaded from its cache
        if args.gelu_fusion > 0:
            raise UserError(f"-ge {args.gelu_fusion}: the cuBLASLt GELU kernels did not build ({error}); use -ge 0")
        notes.append(f"GELU fusion is off: its cuBLASLt kernels did not build ({error}); -ge 0 skips trying")
        run = dataclasses.replace(run, gelu_fusion=0)
    if run.flash_attention and (reason := flash_attention.unavailable_reason()):
        if args.flash_attention > 0:
            raise UserError(f"-fa {args.flash_attention}: FlashAttention-4 cannot run here: {reason}; use -fa 0")
        if not flash_attention.unsupported_gpu_reason():  # the GPU could run it, the package is missing: say how
            notes.append(f"FlashAttention-4 is off: {reason}; bash scripts/setup.sh --gpu installs it, -fa 0 "
                         "skips trying")
        run = dataclasses.replace(run, flash_attention=0)
    if torch.cuda.is_available() and run.bf16 and (error := loss.softmax_grad_build_error()):  # built once, cached
        notes.append(f"the loss's one-pass CUDA kernel did not build ({error}); its Triton kernel runs instead")
    return run


def train(argv=None):
    distributed.exit_on_stop_signals()
    args = config.parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    place = distributed.discover()
    distributed.check_accelerator_env()
    if not torch.cuda.is_available():  # a CPU step's big tensors reuse freed memory instead of faulting in new pages
        host_memory.keep_freed_memory()
    build_locks.check_build_locks(distributed.print0)
    if args.auto_fit:
        args = auto_fit(args, place, distributed.print0)
    run, ds_config, notes = config.resolve(args, place.world_size, has_gpu=torch.cuda.is_available())
    run = settle_kernels(args, run, notes)
    flag = run.train_flag
    vocab_size = run.model.vocab_size  # the loaders refuse token ids the model has no embedding for
    train_loader = ShardLoader(run.train_data, run.B, run.T, place.rank, place.world_size, run.shuffle, flag=flag,
                               vocab_size=vocab_size)
    val_loader = ShardLoader(run.val_data, run.B, run.T, place.rank, place.world_size, shuffle=False, flag="-j",
                             vocab_size=vocab_size)
    num_steps = run.max_steps if run.max_steps > 0 else train_loader.num_tokens // run.total_batch_size
    if num_steps < 1:
        raise UserError(less_than_one_step(run, train_loader.num_tokens))
    notes += warmup_notes(run, num_steps)
    val_batches, val_note = val_num_batches(val_loader, run.val_max_steps, run.val_data)
    notes += [val_note] if val_note else []
    val_loader.check_ahead(val_batches)  # at -v 0 the val loss first reads them after the last step
    hellaswag_examples = load_rendered(run.hellaswag_data) if run.hellaswag else None
    if hellaswag_examples:
        check_fits(hellaswag_examples, run.hellaswag_data, run.model, f"-e {run.init}")
    print0 = distributed.print0
    if run.output_dir:
        if place.rank == 0:
            writable_dir(run.output_dir, "-o")
            saves = os.path.join(run.output_dir, checkpoint.CHECKPOINTS)  # checked now, not at the first save
            if run.checkpoint_every and os.path.exists(saves) and not os.path.isdir(saves):
                raise UserError(f"-o {saves}: is a file, expected a directory (where -n's checkpoints go)")
        if not run.resume and checkpoint.done_steps(run.output_dir):
            raise UserError(f"-y 0: -o {run.output_dir} already holds checkpoints of a run; resume it with -y 1, or "
                            "choose another -o (or delete them) to start over")

    distributed.init_process_group(place)
    resume_step = checkpoint.newest_whole(run.output_dir, say=print0, distributed=True) if run.resume else None
    if run.resume:
        resume.check_step(run, resume_step, num_steps)
    guard = UpdateGuard(run.skip_loss_z, run.skip_grad_z)
    if resume_step is not None:
        saved, train_loader, rng = resume.load_data(run, place, resume_step, guard, train_loader.files)
    with memory.explain_out_of_memory(run, "building the model and its DeepSpeed engine", model_states=True):
        engine = build_engine(run, ds_config)
    start_step = 0
    if resume_step is not None:
        with memory.explain_out_of_memory(run, f"loading the checkpoint of step {resume_step}", model_states=True):
            resume.load_engine(engine, run, resume_step, saved)
        checkpoint.set_rng_state(rng)
        start_step = resume_step
    # a stop signal that cut the saved step's evaluation short: the resumed run evaluates that step again
    evaluation_pending = resume_step is not None and resume.evaluation_pending(run, resume_step)
    log = metrics.MainLog(run.output_dir, enabled=place.rank == 0, resume_step=resume_step,
                          resume_step_evaluated=not evaluation_pending)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print_setup(print0, run, place, num_steps, val_batches, device, notes, ds_config)
    if resume_step is not None:
        print0(f"resumed from {run.output_dir}/{checkpoint.CHECKPOINTS}/{checkpoint.tag(resume_step)} at step {resume_step}")
        if resume_step == num_steps:  # a finished run started again, as llm.c's resume loop may
            print0(f"step {resume_step} is the last step (-x {num_steps}): nothing left to train")
    elif run.resume:
        print0(f"-y 1: no complete checkpoint in {run.output_dir}, starting from step 0")
    if run.output_dir and place.rank == 0:
        metrics.save_config(run.output_dir, "ds_config.json", ds_config)
        metrics.save_config(run.output_dir, "run_config.json", run.to_dict())

    hook = NormHook(engine) if run.zero_stage > 0 else None  # where the guard sees the grad norm under ZeRO
    peak = metrics.peak_bf16_flops(device) if run.bf16 and torch.cuda.is_available() else None
    flops_per_step = run.model.flops_per_token(run.T) * run.B * run.T * run.grad_accum  # per GPU, as llm.c counts
    throughput = metrics.Throughput()
    monitor = metrics.Monitor(engine)
    stop = distributed.StopSignal()  # SIGTERM / SIGUSR1 / Ctrl-C: save at the next step boundary and exit 0

    def save(step, evaluated=True):
        checkpoint.save(engine, run.output_dir, step, resume.run_state(run, step, guard),
                        {"train_loader": train_loader.state_dict(), "rng": checkpoint.rng_state()},
                        keep_last=run.checkpoints_keep, keep_every=run.major_checkpoint_every,
                        evaluation_pending=not evaluated)
        print0(f"saved checkpoint {run.output_dir}/{checkpoint.CHECKPOINTS}/{checkpoint.tag(step)}")

    def checkpoint_due(step, last_step):
        return run.checkpoint_every and ((step > 0 and step % run.checkpoint_every == 0) or last_step)

    def evaluate(step, last_step):
        """The evaluations due at `step` -> (whether any ran, waiting for the GPU; what a stop signal cut short:
        None, or which evaluation)."""
        timings = []
        every_v = run.val_every and step % run.val_every == 0  # -v 0 (as llm.c's train_gpt2.py): the last step only
        if every_v or last_step:
            start = time.perf_counter()
            loss = val_loss(engine.module, val_loader, val_batches, stop=stop.requested)
            if loss is None:
                return True, "the val loss"
            timings.append(("val loss", time.perf_counter() - start))
            print0(f"val loss {loss:.6f}")
            log.val(step, loss)
            monitor.log(step, **{"Val/loss": loss})
        if hellaswag_examples and ((step > 0 and every_v) or last_step):
            start = time.perf_counter()
            result = hellaswag(engine.module, hellaswag_examples, token_budget=run.B * run.T, stop=stop.requested)
            if result is None:
                return True, "HellaSwag"
            timings.append(("HellaSwag", time.perf_counter() - start))
            print0(f"HellaSwag: {result.correct_norm}/{result.total} = {result.acc_norm:.6f} (acc_norm), "
                   f"acc {result.acc:.6f}, {timings[-1][1]:.1f} s")
            log.eval(step, result.acc_norm)
            monitor.log(step, **{"Eval/hellaswag_acc_norm": result.acc_norm, "Eval/hellaswag_acc": result.acc})
        if run.sample_every > 0 and ((step > 0 and step % run.sample_every == 0) or last_step):
            start = time.perf_counter()
            text = sample_text(engine.module, run.gen_tokens)
            timings.append(("sample", time.perf_counter() - start))
            print0(f"generating:\n---\n{text}\n---")
        if timings:  # what -v, -h and -s cost, to weigh against the step time
            print0(f"eval at step {step}: {sum(t for _, t in timings):.2f} s (" +
                   ", ".join(f"{what} {t:.2f} s" for what, t in timings) + ")")
        return bool(timings), None

    nan_at_step = int(os.environ.get("DS_TRAIN_NAN_AT_STEP", -1))  # test hook: the NaN guard at work
    step_end = None  # when the step before this one ended, if training went straight on from it
    for step in range(start_step, num_steps + 1):
        last_step = step == num_steps
        resumed_here = step == start_step and resume_step is not None
        saved = resumed_here  # this step's checkpoint is on disk
        cut_short = None
        # the run that saved this step had already evaluated, sampled and logged it, unless a stop cut that short
        if not resumed_here or evaluation_pending:
            if resumed_here:
                print0(f"evaluating step {step} again: a stop signal cut its evaluation short in the run that saved it")
            with memory.explain_out_of_memory(run, f"evaluating at step {step}"):
                waited, cut_short = evaluate(step, last_step)
            if resumed_here and not cut_short and place.rank == 0:  # done at last: the resume loop may count it
                checkpoint.set_evaluation_pending(run.output_dir, step, False)
            if not (cut_short or saved) and checkpoint_due(step, last_step):
                with memory.explain_out_of_memory(run, f"saving the checkpoint of step {step}"):
                    save(step)
                saved = waited = True
            if waited:
                step_end = None  # it waited for the GPU: the next step is timed from its own start
        if cut_short or (not last_step and stop.requested()):
            if cut_short:  # within the grace time a launcher or scheduler gives before it kills the ranks
                print0(f"{cut_short} at step {step} cut short on {stop.name}" +
                       (f": a run resumed from step {step} evaluates it again" if run.output_dir else ""))
            if not run.output_dir:
                print0(f"stopping at step {step} on {stop.name}: nothing saved (no -o)")
                break
            if not saved:
                save(step, evaluated=not cut_short)
            print0(f"stopping at step {step} on {stop.name}: checkpoint saved; resume with -y 1 -o {run.output_dir}")
            break
        if last_step:
            break
        if run.overfit_single_batch:
            train_loader.reset()
        start = time.perf_counter() if step_end is None else step_end
        lr = learning_rate(step, run.lr_schedule, run.learning_rate, run.warmup_steps, num_steps, run.final_lr_frac)
        with memory.explain_out_of_memory(run, f"training step {step + 1}"):
            loss, norm, skipped = train_step(engine, train_loader, run.grad_accum, lr, guard, hook,
                                             poison=step == nan_at_step)
        # No synchronization here: the update's kernels run while the CPU logs this step and queues the next one,
        # whose time, taken from this one's end, includes them (train_step waits for the GPU once, mid-step).
        step_end = time.perf_counter()
        seconds = step_end - start
        tokens_per_s = throughput.update(run.total_batch_size, seconds)
        mfu = flops_per_step / seconds / peak if peak else None
        print0(metrics.step_line(step + 1, num_steps, loss, norm, lr, 1000 * seconds, tokens_per_s, mfu))
        if skipped:
            print0(f"skipped the update of step {step + 1}: {skipped}")
        if step == start_step:  # AdamW's moments exist from the first update on
            print0(memory.rank_model_states_line(engine))
        log.train(step, loss, lr, norm)
        peak_gib = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        monitor.log(step, **{"Train/loss": loss, "Train/lr": lr, "Train/grad_norm": norm, "Train/tokens_per_s": tokens_per_s,
                             "Train/mfu": mfu, "Train/peak_memory_GiB": peak_gib})
    summary = throughput.summary()
    if torch.cuda.is_available():
        summary += f" | peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
        retries = torch.cuda.memory_stats().get("num_alloc_retries", 0)
        if retries:  # each one synchronized the GPU to free cached blocks: a sign the run is at its memory limit
            summary += f" | {retries} allocation retries (the allocator freed its cache to fit)"
    print0(summary)
    distributed.shutdown()


def main(argv=None) -> int:
    try:
        train(argv)
    except UserError as e:
        _say_on_stderr(f"ds_train: error: {e}")
        return 2
    except distributed.Terminated as e:
        _say_on_stderr(f"ds_train: stopped on {e} before training began: nothing to save")
        return 128 + e.signum  # as the shell reports a process the signal ended
    except KeyboardInterrupt:  # a second Ctrl-C (distributed.StopSignal)
        _say_on_stderr("ds_train: quit on a second Ctrl-C: the steps since the last checkpoint are not saved")
        return 128 + signal.SIGINT
    return 0


def _say_on_stderr(line: str):
    """One line on stderr, prefixed with the rank on ranks other than 0."""
    sys.stderr.write(distributed.rank_prefixed(line))
    sys.stderr.flush()


def exit_without_teardown(code: int):
    """End the process once everything is written, without the interpreter's teardown of the 3000-odd modules
    that torch, dynamo and DeepSpeed load (about 2 s, a fifth of a short CPU run and of each of the test
    suite's hundreds of runs). What the teardown would do that matters is done here: the exit handlers run,
    the streams are flushed, and MPI is finalized where mpi4py started it (mpi4py finalizes in a C exit hook
    that only the teardown runs, and mpirun counts a rank that exits without it as failed), or the job aborted
    after a failure (_end_mpi). ds_train's own files (main.log, checkpoints) are closed or flushed as they are
    written."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    _end_mpi(code)
    os._exit(code)


def _end_mpi(code: int):
    """Where mpi4py started MPI: finalize it, or on a failure end the whole job. MPI_Finalize waits for every rank,
    so a rank that fails alone (rank 0 at the rendezvous, its port taken) would wait there for ever on ranks that
    wait for it; MPI_Abort has mpirun end them all, as the deepspeed launcher does when a rank fails."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return
    if code:
        mpi.COMM_WORLD.Abort(code)
    mpi.Finalize()


def _abort_the_job_on_an_uncaught_exception(kind, value, traceback):
    sys.__excepthook__(kind, value, traceback)
    sys.stderr.flush()
    _end_mpi(1)


if __name__ == "__main__":
    sys.excepthook = _abort_the_job_on_an_uncaught_exception  # a bug's traceback, then the job ends (under MPI)
    exit_without_teardown(main())
