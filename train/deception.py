"""Deception rate: how often an artist-classification model attributes a stylised image to its style's artist.

Two protocols, both with a user-supplied model loaded from a local file (nothing is downloaded): a ``torch.export``
program (``torch.export.save``, ``.pt2``; export it with a dynamic batch dimension) or a TorchScript module:

* ``classify`` (Sanakoyeu et al. 2018): the model returns artist logits; a stylised image deceives when the
  arg-max artist is the artist of its style image.
* ``nearest`` (Cheng et al. 2021, Section 5.3, with the Painter-by-Numbers winner's 2048-d features): the model
  returns features; a stylised image deceives when its nearest painting (L2) in a reference set is by the artist
  of its style image. The paper's reference set is every test painting by artists unseen in training with at least
  30 paintings (1,798 paintings of 34 artists), from which the style images are drawn: :func:`read_reference_set`
  reads such a set (a folder of ``ARTIST/`` subfolders or an ``image,artist`` CSV) and
  :func:`keep_artists_with` applies the 30-painting rule.

The rate is reported over all images and as the mean of per-artist rates (Sanakoyeu's averaging).
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from core.errors import BadInputError
from core.tables import read_csv_rows
from core.tensorfile import PickleRefusedError, refuse_pickles_in_archive

MODES = ("classify", "nearest")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def load_artist_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load an artist classifier / feature extractor saved with ``torch.export.save`` or ``torch.jit.save``."""
    import warnings

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: artist model not found (save yours with torch.export.save(torch.export."
                                "export(model, (example,), dynamic_shapes=...), path))")
    def exported() -> torch.nn.Module:
        # torch.export.load unpickles some members without the weights-only guard: refuse those that need it
        refuse_pickles_in_archive(str(p), "torch.export program")
        return torch.export.load(str(p)).module().to(device)

    def scripted() -> torch.nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript still loads; export is the successor
            return torch.jit.load(str(p), map_location=device).eval()

    errors = []
    # try the format the suffix suggests first (torch.export's own suffix is .pt2)
    for loader in ((exported, scripted) if p.suffix == ".pt2" else (scripted, exported)):
        try:
            return loader()
        except PickleRefusedError:
            raise
        except (RuntimeError, ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
            errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    raise BadInputError(f"{p}: neither a torch.export program nor a TorchScript model ({'; '.join(errors)})")


class DeceptionRate:
    """Accumulates deception outcomes; ``add(stylised, style_artists)`` then ``result()``.

    ``artists`` names the model's classes in logit order (``classify``); for ``nearest`` give the reference style
    images and their artists with :meth:`set_references` first.
    """

    def __init__(self, model: torch.nn.Module, mode: str = "nearest", artists: list[str] | None = None,
                 input_size: int = 224, mean: tuple[float, ...] = _IMAGENET_MEAN,
                 std: tuple[float, ...] = _IMAGENET_STD, device: str | torch.device = "cpu"):
        if mode not in MODES:
            raise ValueError(f"deception mode {mode!r} not in {MODES}")
        if mode == "classify" and not artists:
            raise ValueError("classify mode needs the model's artist names in logit order")
        self.model, self.mode, self.artists = model, mode, list(artists or [])
        self.input_size, self.device = input_size, torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.ref_feats: torch.Tensor | None = None
        self.ref_artists: list[str] = []
        self.hits: dict[str, list[bool]] = defaultdict(list)

    @torch.no_grad()
    def _run(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.to(self.device).float(), size=(self.input_size, self.input_size),
                          mode="bilinear", antialias=True, align_corners=False)
        return self.model((x - self.mean) / self.std).float().flatten(1)

    def set_references(self, styles: torch.Tensor | Iterable[torch.Tensor], artists: list[str]) -> None:
        """Reference paintings and their artists for the ``nearest`` protocol: one (N, 3, H, W) tensor or an
        iterable of batches (features are computed batch by batch, so a large set never sits in memory whole)."""
        batches = [styles] if isinstance(styles, torch.Tensor) else styles
        feats = torch.cat([self._run(b) for b in batches])
        if len(artists) != feats.shape[0]:
            raise ValueError(f"{len(artists)} artists for {feats.shape[0]} reference paintings")
        self.ref_feats = feats
        self.ref_artists = list(artists)

    def predict(self, stylised: torch.Tensor) -> list[str]:
        """The artist the model attributes to each stylised image."""
        out = self._run(stylised)
        if self.mode == "classify":
            if out.shape[1] != len(self.artists):
                raise ValueError(f"artist model returns {out.shape[1]} logits but {len(self.artists)} artist names "
                                 "were given")
            return [self.artists[i] for i in out.argmax(1).tolist()]
        if self.ref_feats is None:
            raise ValueError("nearest mode: call set_references(styles, artists) first")
        nearest = torch.cdist(out, self.ref_feats).argmin(1).tolist()
        return [self.ref_artists[i] for i in nearest]

    def add(self, stylised: torch.Tensor, style_artists: list[str]) -> list[bool]:
        """Score a batch of stylised images whose style images are by ``style_artists``; returns the hits."""
        hits = [p == a for p, a in zip(self.predict(stylised), style_artists, strict=True)]
        for a, h in zip(style_artists, hits):
            self.hits[a].append(h)
        return hits

    def result(self) -> dict[str, float]:
        """``{"deception_rate": over all images, "deception_rate_artist_mean": mean of per-artist rates, "n"}``."""
        all_hits = [h for v in self.hits.values() for h in v]
        if not all_hits:
            return {"deception_rate": float("nan"), "deception_rate_artist_mean": float("nan"), "n": 0}
        per_artist = [sum(v) / len(v) for v in self.hits.values()]
        return {"deception_rate": sum(all_hits) / len(all_hits),
                "deception_rate_artist_mean": sum(per_artist) / len(per_artist), "n": len(all_hits)}


def read_artist_csv(path: str | os.PathLike) -> dict[str, str]:
    """CSV with ``style`` (image path or file stem) and ``artist`` columns -> {stem: artist}."""
    return {Path(r["style"]).stem: r["artist"] for r in read_csv_rows(path, ("style", "artist"), "artist CSV")}


def read_reference_set(source: str | os.PathLike) -> list[tuple[Path, str]]:
    """(painting, artist) pairs of a reference set: a folder with one subfolder per artist holding that artist's
    paintings, or a CSV file with ``image`` and ``artist`` columns (paths relative to the CSV allowed)."""
    from train.inference import list_images

    p = Path(source)
    if p.is_dir():
        out = [(img, sub.name) for sub in sorted(q for q in p.iterdir() if q.is_dir()) for img in list_images(sub)]
        if not out:
            raise ValueError(f"{p}: no paintings in artist subfolders (expected {p}/ARTIST/painting.jpg)")
        return out
    if not p.is_file():
        raise FileNotFoundError(f"{p}: reference set not found (a folder of ARTIST/ subfolders or an image,artist CSV)")
    out = [(Path(r["image"]) if Path(r["image"]).is_absolute() else p.parent / r["image"], r["artist"])
           for r in read_csv_rows(p, ("image", "artist"), "reference set")]
    if not out:
        raise ValueError(f"{p}: no paintings")
    return out


def keep_artists_with(refs: list[tuple[Path, str]], min_paintings: int) -> list[tuple[Path, str]]:
    """The paintings of artists with at least ``min_paintings`` paintings in the set (the paper: 30)."""
    counts = Counter(a for _, a in refs)
    return [(p, a) for p, a in refs if counts[a] >= min_paintings]


def reference_batches(paths: list[Path], load: Callable[[Path], torch.Tensor], size: int,
                      batch: int = 32) -> Iterator[torch.Tensor]:
    """The reference paintings as (n, 3, size, size) batches, each image loaded by ``load`` and resized."""
    for start in range(0, len(paths), batch):
        yield torch.cat([F.interpolate(load(p), size=(size, size), mode="bilinear", antialias=True)
                         for p in paths[start:start + batch]])


class DeceptionScorer:
    """The deception rate as a column of an evaluation (a ``train.evaluation.Scorer``).

    ``model`` is loaded once; each quality row gets a fresh :class:`DeceptionRate`. ``style_artist`` maps a style
    image's file stem to its artist (:func:`read_artist_csv`); in ``nearest`` mode (the default, the balanced-loss
    paper's) ``references`` are the reference paintings (a tensor or batches, see :func:`reference_batches`) with
    ``reference_artists``; there is no default reference set.
    """

    key = "deceived"
    header = "deception ↑"

    def __init__(self, model: torch.nn.Module, style_artist: dict[str, str], mode: str = "nearest",
                 artists: list[str] | None = None, input_size: int = 224, device: str | torch.device = "cpu",
                 references: torch.Tensor | Iterable[torch.Tensor] | None = None,
                 reference_artists: list[str] | None = None):
        self.style_artist = style_artist
        self._make = lambda: DeceptionRate(model, mode, artists, input_size=input_size, device=device)
        self.rate = self._make()
        if mode == "nearest":
            if references is None or not reference_artists:
                raise ValueError("nearest mode needs reference style images and their artists")
            self.rate.set_references(references, reference_artists)
        self._refs = (self.rate.ref_feats, self.rate.ref_artists)

    def begin(self, label: str) -> None:
        self.rate = self._make()
        self.rate.ref_feats, self.rate.ref_artists = self._refs  # reference features computed once

    def add(self, result: torch.Tensor, content: str, style: str) -> float:
        return float(self.rate.add(result, [self.style_artist[Path(style).stem]])[0])

    def value(self) -> float:
        return self.rate.result()["deception_rate"]


def scorer_from_options(cfg, styles: list[str], device) -> DeceptionScorer | None:
    """The deception-rate column of a comparison of the ``styles`` images, from a command's options (None without
    ``cfg.artist_model``): ``artist_model``, ``artists``, ``artist_names``, ``deception_mode``,
    ``deception_references``, ``deception_min_paintings``, ``artist_input_size``. Errors name their flag."""
    if not cfg.artist_model:
        return None
    from core.config import ConfigError
    from core.errors import BadInputError, MissingInputError
    from train.inference import load_image

    refs, ref_artists = None, None
    if cfg.deception_mode == "nearest":
        if not cfg.deception_references:
            raise ConfigError("--deception-mode nearest needs --deception-references: held-out artists' paintings "
                              "(a folder of ARTIST/ subfolders or an image,artist CSV)")
        try:
            reference_set = read_reference_set(cfg.deception_references)
        except FileNotFoundError as exc:
            raise MissingInputError(f"--deception-references {exc}") from None
        except ValueError as exc:
            raise BadInputError(f"--deception-references {exc}") from None
        kept = keep_artists_with(reference_set, cfg.deception_min_paintings)
        if not kept:
            raise BadInputError(f"--deception-references {cfg.deception_references}: no artist has "
                                f"{cfg.deception_min_paintings} paintings (--deception-min-paintings)")
        ref_paths, ref_artists = [p for p, _ in kept], [a for _, a in kept]
        refs = reference_batches(ref_paths, load_image, cfg.artist_input_size)
    style_artist = {}
    if cfg.artists:
        try:
            style_artist = read_artist_csv(cfg.artists)
        except FileNotFoundError as exc:
            raise MissingInputError(f"--artists {exc}") from None
        except ValueError as exc:
            raise BadInputError(f"--artists {exc}") from None
    elif cfg.deception_mode == "nearest":  # a style drawn from the reference set: its artist is known there
        style_artist = {p.stem: a for p, a in reference_set}
    else:
        raise ConfigError("--artist-model needs --artists CSV (style,artist columns)")
    missing = sorted({Path(s).stem for s in styles} - set(style_artist))
    if missing:
        raise BadInputError(f"no artist for style(s) {missing[:5]}: give them in --artists or the references")
    if ref_artists is not None:
        absent = sorted({style_artist[Path(s).stem] for s in styles} - set(ref_artists))
        if absent:
            raise BadInputError(f"--deception-references {cfg.deception_references}: no reference paintings by "
                                f"{absent[:5]}, the artists of some styles")
    names = None
    if cfg.deception_mode == "classify":
        if not cfg.artist_names:
            raise ConfigError("--deception-mode classify needs --artist-names (one artist per line, logit order)")
        if not Path(cfg.artist_names).is_file():
            raise MissingInputError(f"--artist-names {cfg.artist_names}: file not found")
        names = [n.strip() for n in Path(cfg.artist_names).read_text().splitlines() if n.strip()]
    try:
        model = load_artist_model(cfg.artist_model, device)
    except FileNotFoundError as exc:
        raise MissingInputError(f"--artist-model {exc}") from None
    try:
        return DeceptionScorer(model, style_artist, cfg.deception_mode, names, cfg.artist_input_size, device,
                               refs, ref_artists)
    except ValueError as exc:
        raise ConfigError(f"--deception-mode {cfg.deception_mode}: {exc}") from None
