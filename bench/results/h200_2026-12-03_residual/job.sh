#!/bin/bash
# detached (lease of 2026-12-03 night): weight-gradient micro-bench, then trainer A/B/C of three trees:
# t0 = before the forward-tile change, t1 = HEAD (tiles), new = tiles + the residual add deferred into the
# next block's LayerNorm kernel; d12 and d48, then a d12 profile of new, d24 B=64 t1 vs new, block kernels
export TORCH_CUDA_ARCH_LIST=9.0 PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
R=/tmp/res; mkdir -p $R
cd /tmp/new
(while true; do nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm,temperature.gpu --format=csv,noheader >> $R/clocks.csv; sleep 10; done) &
python3 bench/weight_grad_fp32.py > $R/weight_grad_fp32.txt 2>&1
touch $R/wg.done
source bench/device_env.sh; random_shards
export TORCH_EXTENSIONS_DIR=/tmp/torch_ext_fresh/shared
D12=(--ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288 -z 1)
D48=(--ds_config ds_configs/gpt2_1558M.json -e d48 -b 16 -t 1024 -d 131072 -z 1)
D24=(--ds_config ds_configs/gpt2_350M.json -e d24 -b 64 -t 1024 -d 524288 -z 1)
OUT=$R/warmup; mkdir -p $OUT; train_run warmup 6 "${D12[@]}"
touch $R/warmup.done
OUT=$R/d12; mkdir -p $OUT
for i in 1 2; do for side in t0 t1 new; do (cd /tmp/$side && train_run ${side}_$i 12 "${D12[@]}"); done; done
python3 bench/summarize.py $OUT/*.log --first 4 --last 12 > $OUT/summary.txt 2>&1
touch $R/d12.done
OUT=$R/d48; mkdir -p $OUT
for i in 1 2; do for side in t1 new; do (cd /tmp/$side && train_run ${side}_$i 8 "${D48[@]}"); done; done
python3 bench/summarize.py $OUT/*.log --first 4 --last 8 > $OUT/summary.txt 2>&1
touch $R/d48.done
python3 bench/profile_step.py "${D12[@]}" -i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin" > $R/profile_d12_new.txt 2>&1
touch $R/profile.done
OUT=$R/d24; mkdir -p $OUT
for side in t1 new; do (cd /tmp/$side && train_run ${side}_1 10 "${D24[@]}"); done
python3 bench/summarize.py $OUT/*.log --first 4 --last 10 > $OUT/summary.txt 2>&1
touch $R/d24.done
python3 bench/block_kernels.py d12 d48 > $R/block_kernels.txt 2>&1
kill %1
touch $R/all.done
