"""One of Inductor's kernel choices changed for ds_train's compiled blocks: LayerNorm rows up to 2048 wide are
normalized from registers in one pass over memory (a "persistent" reduction).

Inductor keeps a row in registers only up to 1024 columns; wider rows (d48's 1600, GPT-3's 1536 and 2048)
get a loop that reads the row once for the mean and variance and again to normalize. d48's LayerNorm forward
kernels then ran 2.2-2.8 times as long as one copy of their input, against 0.8-1.2 times for d24's 1024-wide
rows; persistent up to 2048 they ran 1.1-1.2 times, 100 us less per block forward and backward, and d48 trained
1.5% faster (`bench/block_kernels.py`, `bench/ab_trees.sh`, H200). GPT-3 XL's 2048-wide ones went from 1.35-1.57
to 1.0-1.2 times. Wider rows (GPT-3 from 2560 up) keep Inductor's loop: not measured.

Installed through Inductor's own hook for its heuristics (a torch._inductor.choices.InductorChoices subclass,
made by the factory in `config.inductor_choices_class`), so that its uuid enters the compiled-graph cache's
key where the torch version supports that, and a graph cached without the choice is not reused with it.
"""

import torch
from torch._inductor.choices import InductorChoices
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.virtualized import V

PERSISTENT_ROW_WIDTH = 2048


class PersistentRows(InductorChoices):
    """Inductor's choices, with inner (row) reductions up to PERSISTENT_ROW_WIDTH wide kept persistent."""

    @staticmethod
    def should_use_persistent_reduction(features, cooperative_reduction: bool) -> bool:
        if torch._inductor.config.triton.persistent_reductions and not cooperative_reduction and \
                features.get_reduction_hint() == ReductionHint.INNER and \
                V.graph.sizevars.statically_known_leq(features.reduction_numel, PERSISTENT_ROW_WIDTH):
            return True
        return InductorChoices.should_use_persistent_reduction(features, cooperative_reduction)

    def uuid(self) -> str:
        return f"ds_train.inductor_choices.PersistentRows({PERSISTENT_ROW_WIDTH})"


def persistent_rows() -> PersistentRows:
    """The factory for `torch._inductor.config.inductor_choices_class`."""
    return PersistentRows()


def install():
    """Use PersistentRows in every compile of this process (any thread); a no-op the second time. A choices
    class that someone else installed stays, with a note why."""
    config = torch._inductor.config
    if hasattr(config, "inductor_choices_class"):  # absent from some torch versions: the handler below still works
        if config.inductor_choices_class not in (None, persistent_rows):
            print(f"note: Inductor's choices are {config.inductor_choices_class!r}, set before ds_train's; LayerNorm "
                  f"rows wider than 1024 keep Inductor's two-pass loop")
            return
        config.inductor_choices_class = persistent_rows
    V.set_choices_handler(PersistentRows())  # this thread may have made Inductor's default choices already
