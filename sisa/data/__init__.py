"""Data sources (built-in datasets, CSV, Parquet) and the partition of ids into shards and slices."""
