"""cvtool at scale: a task over many inputs on a Ray cluster (`ray_run`, `cvtool ray`).

For one machine or a handful, `--shard K/N` and `--records FILE` (cvtool.io.shards, cvtool.io.journal)
need nothing more; see the README, "Batch jobs at scale".
"""

from cvtool.scale.ray_data import TASKS, ray_records, ray_run

__all__ = ["TASKS", "ray_records", "ray_run"]
