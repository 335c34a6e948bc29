"""Training: shard jobs, slice-by-slice training, vectorised training of several shards at once,
and the executors that run jobs in-process or on Ray."""
