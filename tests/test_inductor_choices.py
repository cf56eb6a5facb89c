"""ds_train.inductor_choices: LayerNorm rows up to 2048 wide compile to one-pass (persistent) Triton kernels."""

import pytest
import torch
import torch.nn as nn

from ds_train import inductor_choices
from ds_train.model import GPT, config_from_descriptor


def test_compiling_the_model_installs_the_choices_and_they_key_the_compile_cache():
    GPT(config_from_descriptor("gpt2:d1:c32:h2")).set_compile(True)
    from torch._inductor.virtualized import V
    assert isinstance(V.choices, inductor_choices.PersistentRows)
    portable = torch._inductor.config.save_config_portable()  # what keys the cache of compiled graphs
    if "inductor_choices_class" in portable:  # torch 2.13 keys it by the uuid, 2.11 by the factory (pickled by name)
        assert portable["inductor_choices_class"] in (inductor_choices.PersistentRows().uuid(),
                                                      inductor_choices.persistent_rows)
    inductor_choices.install()  # a second call changes nothing
    if hasattr(torch._inductor.config, "inductor_choices_class"):
        assert torch._inductor.config.inductor_choices_class is inductor_choices.persistent_rows
    assert isinstance(V.choices, inductor_choices.PersistentRows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Inductor's Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("width, persistent", [(1600, True), (2048, True), (2560, False)])
def test_layer_norm_rows_up_to_2048_wide_compile_to_one_pass(width, persistent):
    from torch._inductor.utils import run_and_get_code
    inductor_choices.install()
    torch._dynamo.reset()
    norm = nn.LayerNorm(width).cuda().bfloat16()
    x = torch.randn(4096, width, device="cuda", dtype=torch.bfloat16)
    out, (code, *_) = run_and_get_code(torch.compile(norm), x)
    assert ("def triton_per_" in code) == persistent and ("def triton_red_" in code) != persistent
    torch.testing.assert_close(out, norm(x))
