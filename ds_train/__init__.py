"""ds_train: GPT-2 and GPT-3 pretraining on DeepSpeed (README.md)."""

import logging


def _not_the_missing_cuda_runtime_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("No CUDA runtime is found")


def _not_the_cpu_accelerator_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Setting accelerator to CPU. If you have GPU")


# A CUDA build of torch on a machine with the CUDA toolkit but no GPU it can see (a CPU run on a GPU machine, whose
# GPUs DS_ACCELERATOR=cpu hides; a build box) warns as torch.utils.cpp_extension is imported that it found no CUDA
# runtime. ds_train then runs on the CPU, which its settings table says (device); the warning would be the first
# line of every rank's output and of every one-line error. Set before any ds_train module imports that module.
logging.getLogger("torch.utils.cpp_extension").addFilter(_not_the_missing_cuda_runtime_warning)
# Likewise DeepSpeed, finding no GPU (and no DS_ACCELERATOR), warns as it is imported that it chose the CPU "If you have
# GPU or other accelerator, we were unable to detect it": the first line of a CPU run such as the quickstart's, where
# the CPU is what was meant. The filter stays on DeepSpeed's logger when DeepSpeed sets it up on import.
logging.getLogger("DeepSpeed").addFilter(_not_the_cpu_accelerator_warning)
