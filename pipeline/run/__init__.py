"""A run over a video list: planned once (`plan`), its shards run (`shard`, writing through `results`),
finished (`finish`: HDF5, run record, summary). `pipeline.extract` calls these steps in order;
`pipeline.launch` runs shards in local or Slurm jobs.
"""

from pipeline.run.finish import consolidate_outputs, environment_record, finish_run
from pipeline.run.launched import launch_run
from pipeline.run.plan import (
    RunError,
    RunPlan,
    ShardPlan,
    plan_run,
    prepare_demo,
    print_plan,
    resolve_zoo_checkpoint,
)
from pipeline.run.shard import ShardSummary, recipe_fps_note, run_shard

__all__ = [
    "RunError",
    "RunPlan",
    "ShardPlan",
    "ShardSummary",
    "consolidate_outputs",
    "environment_record",
    "finish_run",
    "launch_run",
    "plan_run",
    "prepare_demo",
    "print_plan",
    "recipe_fps_note",
    "resolve_zoo_checkpoint",
    "run_shard",
]
