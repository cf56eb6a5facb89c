#!/usr/bin/env bash
# One SLURM task (srun, one task per GPU) as a ds_train rank: srun's task numbers become the RANK,
# LOCAL_RANK and WORLD_SIZE that ds_train reads (MASTER_ADDR and MASTER_PORT come from scripts/slurm.sbatch).
export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=${SLURM_STEP_NUM_TASKS:-$SLURM_NTASKS}
exec "$@"
