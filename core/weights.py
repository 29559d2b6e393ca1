"""Pretrained weight files: one table of the known backbones and one lookup. Nothing is ever downloaded.

:data:`BACKBONES` lists every pretrained network bbst can load (name, file names, environment variable, the
caches searched, where to fetch the file). :func:`find_weights` turns a weights value into a local file:

* ``None`` or ``""``: random initialisation (returns None);
* ``"auto"`` or ``"cache"`` (the same): search, in order, the environment variable that names the file itself,
  ``$BBST_WEIGHTS_DIR``, torch hub's ``checkpoints`` folder, the Hugging Face hub cache (read offline) and the
  open_clip / OpenAI CLIP caches, for the file names of the backbone;
* anything else: the path of a file.

A file that is not found raises :class:`WeightsNotFoundError`, which lists every place looked at and where to
get the file. :func:`locate` is the same search without the error, and :func:`weights_table` reports every
backbone's search at once; :func:`weights_listing` adds each one's fetch command and :func:`render_listing` is
the text a ``bbst weights`` listing shows.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import MissingInputError

# File names tried in a Hugging Face repo's cached snapshot when the source names none.
HF_FILENAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)
SEARCH_VALUES = ("auto", "cache")  # weights values that mean "search the local places"
WEIGHTS_DIR_ENV = "BBST_WEIGHTS_DIR"
# the last line of every weights-not-found error: the command that lists every backbone and how to fetch it
HF_CLI = "huggingface-cli download"  # the Hugging Face hub's own client; it fills the cache bbst reads
LIST_HINT = "`bbst weights` lists every backbone, where bbst looks for it and the command that fetches it"


class WeightsNotFoundError(MissingInputError):
    """No weight file for a backbone; the message lists every place looked at and how to supply one."""


@dataclass
class WeightsSource:
    """Where one network's pretrained file may be found locally (a classifier trunk's JSON config holds one).

    ``backbone`` names a row of :data:`BACKBONES`, whose source is used; the other fields describe a source
    directly (older classifier checkpoints store them so).
    """

    backbone: str | None = None  # a name in core.weights.BACKBONES (its source replaces the fields below)
    hf_repo: str | None = None  # Hugging Face repo id whose cached snapshot holds the file
    hf_filenames: list[str] = field(default_factory=lambda: list(HF_FILENAMES))  # file names tried in that snapshot
    hub_filenames: list[str] = field(default_factory=list)  # tried in $BBST_WEIGHTS_DIR and torch hub's checkpoints
    open_clip_filenames: list[str] = field(default_factory=list)  # file names tried in the open_clip/CLIP caches
    env: str | None = None  # environment variable naming the file itself (looked at first)
    note: str = ""  # where a user gets the file, shown in the missing-file error

    def __post_init__(self) -> None:
        if self.backbone is not None:
            backbone(self.backbone)  # an unknown name fails when the config is read, not at the first lookup


@dataclass(frozen=True)
class Backbone:
    """One pretrained network bbst can load: what it is, what uses it, and where its file is looked for."""

    name: str  # the table key (also what a WeightsSource's backbone names)
    title: str  # how errors name it ("VGG-19")
    used_by: str  # what in bbst loads it, and the option that passes a path
    source: WeightsSource  # file names, environment variable and Hugging Face repo searched
    fetch: str  # where to get the file on a machine with internet access

    @property
    def files(self) -> list[str]:
        """Every file name looked for, in order."""
        s = self.source
        return list(dict.fromkeys(s.hub_filenames + s.open_clip_filenames + (s.hf_filenames if s.hf_repo else [])))


_TORCHVISION = "https://download.pytorch.org/models/"
_CLIP_NOTE = "OpenAI CLIP ViT-B/16 in open_clip or timm format"
BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("vgg19", "VGG-19", "style-transfer encoders and the Gram metric (model option vgg_weights, --vgg-weights)",
             WeightsSource(hub_filenames=["vgg19-dcbb9e9d.pth", "vgg_normalised.pth"], env="BBST_VGG19_WEIGHTS"),
             f"torchvision's ImageNet VGG-19 {_TORCHVISION}vgg19-dcbb9e9d.pth, or the AdaIN/PAMA vgg_normalised.pth "
             "(release of naoto0804/pytorch-AdaIN)"),
    Backbone("vgg16", "VGG-16", "VGG-16 loss networks (model option loss_vgg_weights)",
             WeightsSource(hub_filenames=["vgg16-397923af.pth"], env="BBST_VGG16_WEIGHTS"),
             f"torchvision's ImageNet VGG-16 {_TORCHVISION}vgg16-397923af.pth"),
    Backbone("lpips_alex", "LPIPS alex backbone", "the LPIPS metric and loss, net alex (--lpips-backbone)",
             WeightsSource(hub_filenames=["alexnet-owt-7be5be79.pth"], env="BBST_LPIPS_BACKBONE"),
             f"torchvision's AlexNet {_TORCHVISION}alexnet-owt-7be5be79.pth"),
    Backbone("lpips_vgg", "LPIPS vgg backbone", "the LPIPS metric and loss, net vgg (--lpips-backbone)",
             WeightsSource(hub_filenames=["vgg16-397923af.pth"], env="BBST_LPIPS_BACKBONE"),
             f"torchvision's VGG-16 {_TORCHVISION}vgg16-397923af.pth"),
    Backbone("inception_v3", "InceptionV3 (SIFID)", "the SIFID metric (--inception-weights)",
             WeightsSource(hub_filenames=["inception_v3_google-0cc3c7bd.pth", "pt_inception-2015-12-05-6726825d.pth"],
                           env="BBST_INCEPTION_WEIGHTS"),
             f"torchvision's {_TORCHVISION}inception_v3_google-0cc3c7bd.pth, or pytorch-fid's "
             "pt_inception-2015-12-05-6726825d.pth (release fid_weights of mseitzer/pytorch-fid)"),
    Backbone("inception_v3_torchvision", "InceptionV3 (Magenta style prediction)",
             "the Magenta model's style prediction network (model option inception_weights)",
             WeightsSource(hub_filenames=["inception_v3_google-0cc3c7bd.pth"], env="BBST_INCEPTION_WEIGHTS"),
             f"torchvision's {_TORCHVISION}inception_v3_google-0cc3c7bd.pth"),
    Backbone("clip_vitb16", "OpenAI CLIP ViT-B/16", "the classifier's content trunk (--weights)",
             WeightsSource(hf_repo="timm/vit_base_patch16_clip_224.openai", open_clip_filenames=["ViT-B-16.pt"]),
             f"{_CLIP_NOTE}: open_clip_pytorch_model.bin or model.safetensors from the Hugging Face repo "
             "timm/vit_base_patch16_clip_224.openai, or ViT-B-16.pt from the OpenAI CLIP release"),
    Backbone("vit_b16_augreg", "ViT-B/16 (augreg, ImageNet-21k + 1k)", "the bbst_vitb16_2trunk style trunk (--style-weights)",
             WeightsSource(hf_repo="timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"),
             "timm ViT-B/16 weights: model.safetensors from the Hugging Face repo "
             "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"),
    Backbone("vit_b16_orig", "ViT-B/16 (original, ImageNet-21k + 1k)",
             "the bbst_vitb16_imagenet_aladin content trunk (--weights)",
             WeightsSource(hf_repo="timm/vit_base_patch16_224.orig_in21k_ft_in1k"),
             "the original ViT-B/16 (Dosovitskiy et al.): model.safetensors from the Hugging Face repo "
             "timm/vit_base_patch16_224.orig_in21k_ft_in1k"),
    Backbone("aladin_vit", "ALADIN-ViT", "the classifier's ALADIN style trunk (--style-weights)",
             WeightsSource(hub_filenames=["aladinVIT_bamfg_64.47.pt"]),
             "the ALADIN-ViT release file aladinVIT_bamfg_64.47.pt (GitHub release of DanRuta/ALADIN)"),
)}


def cache_dirs() -> dict[str, Path]:
    """The local folders searched, by kind (environment variables as torch, Hugging Face and open_clip read them)."""
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", home / ".cache"))
    if "torch" in sys.modules:  # honours torch.hub.set_dir()
        torch_hub = Path(sys.modules["torch"].hub.get_dir())
    else:  # what torch.hub.get_dir() returns, without importing torch
        torch_hub = Path(os.environ.get("TORCH_HOME", xdg / "torch")).expanduser() / "hub"
    hf_hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    hf_home = Path(os.environ.get("HF_HOME", xdg / "huggingface"))
    return {
        "bbst": Path(os.environ.get(WEIGHTS_DIR_ENV, xdg / "bbst" / "weights")),
        "torch_hub": torch_hub / "checkpoints",
        "hf_hub": Path(hf_hub) if hf_hub else hf_home / "hub",
        "open_clip": xdg / "open_clip",
        "clip": xdg / "clip",
    }


def _source_of(source: WeightsSource | Backbone | str | None) -> tuple[WeightsSource, Backbone | None]:
    if isinstance(source, str):
        source = backbone(source)
    if isinstance(source, Backbone):
        return source.source, source
    source = source or WeightsSource()
    if source.backbone:
        row = backbone(source.backbone)
        return row.source, row
    return source, None


def backbone(name: str) -> Backbone:
    """The row of :data:`BACKBONES` called ``name`` (a ValueError naming the known ones otherwise)."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}") from None


def _hf_cached(repo: str, filename: str, hub_dir: Path) -> tuple[Path | None, Path]:
    """``filename`` in the newest cached snapshot of ``repo`` (pure file-system lookup), and the path shown."""
    repo_dir = hub_dir / ("models--" + repo.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    snapshots = repo_dir / "snapshots"
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip() / filename
        if candidate.is_file():
            return candidate, candidate
    if snapshots.is_dir():
        for snap in sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            if (snap / filename).is_file():
                return snap / filename, snap / filename
    return None, snapshots / "<revision>" / filename


def locate(source: WeightsSource | Backbone | str | None) -> tuple[Path | None, list[Path]]:
    """Search the local places for a backbone's file: ``(the file or None, every path looked at, in order)``."""
    src, _ = _source_of(source)
    dirs = cache_dirs()
    looked: list[Path] = []

    def first(paths):
        for path in paths:
            looked.append(path)
            if path.is_file():
                return path
        return None

    names = list(dict.fromkeys(src.hub_filenames + src.open_clip_filenames + (src.hf_filenames if src.hf_repo else [])))
    found = (first([Path(os.environ[src.env]).expanduser()] if src.env and os.environ.get(src.env) else [])
             or first(dirs["bbst"] / n for n in names)
             or first(dirs["torch_hub"] / n for n in src.hub_filenames))
    if found is None and src.hf_repo:
        for name in src.hf_filenames:
            hit, shown = _hf_cached(src.hf_repo, name, dirs["hf_hub"])
            looked.append(shown)
            if hit is not None:
                return hit, looked
    if found is None:
        found = first(dirs[kind] / n for n in src.open_clip_filenames for kind in ("open_clip", "clip"))
    return found, looked


def find_weights(spec: str | os.PathLike | None, source: WeightsSource | Backbone | str | None,
                 what: str | None = None) -> Path | None:
    """Turn a weights value into a local file (module docstring); ``source`` is a backbone name or a source.

    ``what`` names the network in errors (default: the backbone's title).
    """
    if spec is None or str(spec) == "":
        return None
    src, row = _source_of(source)
    what = what or (row.title if row else "backbone")
    fetch = row.fetch if row else src.note
    if str(spec) not in SEARCH_VALUES:
        path = Path(spec).expanduser()
        if path.is_file():
            return path
        raise WeightsNotFoundError(f"{what} weights not found: {path} does not exist. Pass an existing "
                                   f".safetensors/.pth/.bin file, or 'auto' to search the local caches. {fetch}".strip(),
                                   hint=LIST_HINT)
    found, looked = locate(source)
    if found is not None:
        return found
    dirs = cache_dirs()
    where = f"${WEIGHTS_DIR_ENV} ({dirs['bbst']})" + (f", or set ${src.env} to the file" if src.env else "")
    raise WeightsNotFoundError(
        f"{what} weights not found (nothing is downloaded). Looked in:\n  " + "\n  ".join(map(str, looked))
        + f"\nPut the file in {where}, or pass its path explicitly. {fetch}".rstrip(), hint=LIST_HINT)


def weights_table() -> list[dict]:
    """One row per known backbone: name, title, used_by, env, files, fetch, ``found`` (path or None) and ``looked``."""
    rows = []
    for row in BACKBONES.values():
        found, looked = locate(row)
        rows.append({"name": row.name, "title": row.title, "used_by": row.used_by, "env": row.source.env,
                     "files": row.files, "hf_repo": row.source.hf_repo, "fetch": row.fetch,
                     "found": str(found) if found else None, "looked": [str(p) for p in looked]})
    return rows


def fetch_command(row: dict, weights_dir: str) -> str | None:
    """The shell command that fetches ``row``'s file into a folder bbst searches, or None when only a note exists.

    A file with a direct URL goes to ``weights_dir`` (``$BBST_WEIGHTS_DIR``); a Hugging Face file goes to the hub
    cache through the hub's own client, which is where bbst reads it.
    """
    url = next(iter(re.findall(r"https://\S+\.(?:pth|pt|bin|safetensors)", row["fetch"])), None)
    if url:
        target = f"{weights_dir}/{url.rsplit('/', 1)[-1]}"
        return f"mkdir -p {shlex.quote(weights_dir)} && curl -L -o {shlex.quote(target)} {url}"
    if row.get("hf_repo"):
        name = next((f for f in ("open_clip_pytorch_model.bin", "model.safetensors") if f in row["files"]),
                    row["files"][0])
        return f"{HF_CLI} {row['hf_repo']} {name}"
    return None


def weights_listing() -> list[dict]:
    """:func:`weights_table` with each row's fetch command (``command``) and the weights folder variable."""
    weights_dir = str(cache_dirs()["bbst"])
    return [{**row, "command": fetch_command(row, weights_dir), "weights_dir_env": WEIGHTS_DIR_ENV}
            for row in weights_table()]


def render_listing(table: list[dict]) -> str:
    """The listing a terminal shows for rows of :func:`weights_listing`: one block per backbone."""
    dirs = cache_dirs()
    present = sum(1 for r in table if r["found"])
    lines = [(f"{present} of {len(table)} backbones present. bbst never downloads weights; it looks, in order, in the "
             "file an environment variable names, "
             f"${WEIGHTS_DIR_ENV} ({dirs['bbst']}), torch hub ({dirs['torch_hub']}), the Hugging Face cache "
             f"({dirs['hf_hub']}) and the open_clip / CLIP caches ({dirs['open_clip']}, {dirs['clip']})."), ""]
    for r in table:
        state = f"present: {r['found']}" if r["found"] else "MISSING"
        lines.append(f"{r['title']} [{r['name']}]: {state}")
        lines.append(f"  used by: {r['used_by']}")
        lines.append(f"  files:   {', '.join(r['files'])}" + (f" (or ${r['env']} = the file)" if r["env"] else "")
                     + (f"; Hugging Face repo {r['hf_repo']}" if r["hf_repo"] else ""))
        if not r["found"]:
            if r["command"]:
                lines.append(f"  fetch:   {r['command']}")
            lines.append(f"  source:  {r['fetch']}")
        lines.append("")
    lines.append("Evaluation commands run without the metric backbones with --random-metrics (the numbers are then "
                 "meaningless); the tiny test models (*_tiny, test_*) need no weights.")
    return "\n".join(lines)
