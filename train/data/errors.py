"""The loader's errors: a stream that cannot be produced or continued, and one undecodable sample."""

from __future__ import annotations

from core.errors import BbstError


class LoaderError(BbstError, ValueError):
    """Shards, manifest or loader settings that cannot produce the stream, or a resume that cannot continue it."""


class DamagedSample(LoaderError):
    """One sample whose bytes do not decode (skipped by the loader, up to ``loader.max_damaged_fraction``)."""
