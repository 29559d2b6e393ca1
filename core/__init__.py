"""The base every bbst library stands on; it imports nothing else of the project.

errors (user-facing error classes), config (typed dataclasses from YAML and ``--set``), cli (flags from configs and
the error boundary), store (one output folder, local or fsspec), atomic (the one atomic write), shards (tar
reading), tarwrite (tar shards, manifest and Parquet metadata), tensorfile (torch.save files read as data, never
through pickle), paths (files of a user's folder stay inside it), schema (sample keys, statuses, output and
staging layout), synthetic (generated images for demos and tests), progress (the driver's progress line), watchdog
(what a command started ends with it).
"""
