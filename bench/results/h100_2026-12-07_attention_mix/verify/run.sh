#!/bin/bash
# The second call's job (bench/lent_machine.sh start SECONDS bench/results/h100_2026-12-07_attention_mix/verify.sh):
# bench/attention_mix.py on the committed code, whose -fa 1 now takes cuDNN's forward on Hopper, then the GPU tests
# with FlashAttention-4 installed.
"${PYTHON:-python3}" bench/attention_mix.py > "$OUT/attention_mix_final.txt" 2>&1
touch "$OUT/mix.done"
OUT=$OUT/tests bash bench/owed.sh . tests
