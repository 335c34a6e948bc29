"""The workspace on disk: safe file access, the typed manifests, shard rows, the deletion ledger,
the lock, staging and swaps. The bottom layer: it imports nothing of sisa above the base modules."""
