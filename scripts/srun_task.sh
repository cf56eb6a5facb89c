#!/usr/bin/env bash
# One SLURM task (srun, one task per GPU) as a ds_train rank: srun's task numbers become the RANK,
# LOCAL_RANK and WORLD_SIZE that ds_train reads (MASTER_ADDR and MASTER_PORT come from scripts/slurm.sbatch).
export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=${SLURM_STEP_NUM_TASKS:-$SLURM_NTASKS}
# the ranks on each node, where every node has as many ("8" or "8(x2)"; --auto_fit's host memory is theirs)
if [[ ${SLURM_STEP_TASKS_PER_NODE:-} =~ ^([0-9]+)(\(x[0-9]+\))?$ ]]; then export LOCAL_WORLD_SIZE=${BASH_REMATCH[1]}; fi
exec "$@"
