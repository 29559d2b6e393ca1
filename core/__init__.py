"""The base every bbst library stands on; it imports nothing else of the project.

errors (user-facing error classes), config (typed dataclasses from YAML and ``--set``), cli (flags from configs,
logging set-up and the error boundary), store (one output folder, local or fsspec), atomic (the one atomic write),
shards (tar reading), tarwrite (tar shards, manifest and Parquet metadata), tables (a user's CSV read as rows),
schema (sample keys, statuses, output and staging layout), images (which files are images, the colour rule, open
upright, thumbnails), device (the ``--device`` rule), weights (the table of known backbones and the one weight
lookup), tensorfile (torch.save files read as data, never through pickle), paths (files of a user's folder stay
inside it), synthetic (generated images for demos and tests), progress (the driver's progress line), watchdog
(what a command started ends with it).
"""
