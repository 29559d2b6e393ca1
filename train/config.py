"""Typed configuration: training (data, loader, model, optimisation, schedule, logging, checkpoints,
distribution), the evaluation settings every style-transfer evaluation command shares, and the config of each
``train`` command (stylize, evaluate, compare, make-protocol, metastyle, vst-styles, balanced-loss-analysis): this
module imports nothing heavy, so a script builds its flags from these classes before torch loads.

Filled by ``core.config.load_config(TrainConfig, path, sets=[...])``: a YAML file supplies values, ``--set``
overrides them, unknown keys are errors. A checkpoint stores ``to_dict(cfg)`` so a run describes itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class DataConfig:
    root: str | list[str] = ""  # curation output directory (local path or fsspec URL), or a list of them to mix
    content_subset: str = "content"  # subset name of the content shards (DIR/shards/{subset}-NNNNNN.tar)
    style_subset: str = "style"  # subset name of the style shards
    crop_size: int = 256  # square training crop in pixels
    short_side_min: int = 256  # random resize: short side drawn uniformly from [min, max] before the crop
    short_side_max: int = 1024  # upper end of the short-side range (capped at the image's own short side)
    hflip: bool = True  # random horizontal flip of every crop
    style2: bool = True  # also yield ``style2``, a second random crop of the same style image (contrastive loss)
    content_weights: list[float] = field(default_factory=list)  # per-root share of the content stream ([] = all once)
    style_weights: list[float] = field(default_factory=list)  # per-root share of the style stream ([] = all once)

    def roots(self) -> list[str]:
        """``root`` as a list (a single directory is a list of one)."""
        return [self.root] if isinstance(self.root, str) else list(self.root)

    def __post_init__(self) -> None:
        for name in ("content_weights", "style_weights"):
            weights = getattr(self, name)
            if weights and (len(weights) != len(self.roots()) or min(weights) < 0 or sum(weights) <= 0):
                raise ValueError(f"data.{name} must hold one non-negative weight per data.root entry "
                                 f"({len(self.roots())}) with a positive sum, got {weights}")
        if self.crop_size <= 0:
            raise ValueError(f"data.crop_size must be positive, got {self.crop_size}")
        if self.short_side_min < self.crop_size:
            raise ValueError(f"data.short_side_min ({self.short_side_min}) must be >= crop_size ({self.crop_size})")
        if self.short_side_max < self.short_side_min:
            raise ValueError(f"data.short_side_max ({self.short_side_max}) must be >= short_side_min")


@dataclass
class LoaderConfig:
    batch_size: int = 4  # pairs per micro-batch per rank
    num_workers: int = 2  # DataLoader worker processes per rank (0 = decode in the training process)
    open_shards: int = 4  # shards each worker reads at once, interleaved at random (mixes across shards)
    shuffle_buffer: int = 32  # raw (undecoded) samples held per stream for shuffling; decode happens after
    decode: Literal["cpu", "cuda"] = "cpu"  # "cuda": workers ship JPEG bytes, the GPU decodes (nvJPEG)
    prefetch_factor: int = 2  # batches each worker prepares ahead
    pin_memory: bool = True  # page-locked host batches for faster host-to-GPU copies (ignored on CPU)
    seed: int = 0  # data-order seed: shard order, interleaving, shuffle buffer and crops derive from it
    max_damaged_fraction: float = 0.01  # stop when more than this share of a rank's samples in an epoch fail to decode

    def __post_init__(self) -> None:
        for name in ("batch_size", "open_shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"loader.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0 or self.shuffle_buffer < 0:
            raise ValueError("loader.num_workers and loader.shuffle_buffer must be >= 0")
        if not 0.0 <= self.max_damaged_fraction <= 1.0:
            raise ValueError(f"loader.max_damaged_fraction must be in [0, 1], got {self.max_damaged_fraction}")


@dataclass
class ModelConfig:
    name: str = "neat_tiny"  # registered model name (train.models.list_models())
    # overrides of the model's own config, typed by its family's dataclass (NeATConfig, RASTConfig, ...): loss
    # weights, widths, prior settings; an unknown key or a wrong type is an error when the file is loaded
    kwargs: dict[str, Any] = field(default_factory=dict)
    style_loss: str = ""  # style loss of every model ("mean_std", "gram", "balanced_gram"); "" = the model's own

    def __post_init__(self) -> None:
        if not self.kwargs:
            return  # nothing to check (and importing every model family is not free)
        from core.config import ConfigError, check_fields
        from train.models import model_config_class

        try:
            family = model_config_class(self.name)
        except ValueError as exc:
            raise ConfigError(f"model.name: {exc}", key="model.name") from None
        self.kwargs = check_fields(family, self.kwargs, "model.kwargs")


@dataclass
class OptimConfig:
    lr: float = 1e-4  # generator Adam learning rate (PAMA / IEContraAST use 1e-4)
    betas: tuple[float, float] = (0.9, 0.999)  # generator Adam betas
    lr_d: float = 1e-4  # discriminator Adam learning rate
    betas_d: tuple[float, float] = (0.5, 0.999)  # discriminator Adam betas (GAN practice, IEContraAST)
    weight_decay: float = 0.0  # Adam weight decay for both optimizers
    grad_clip: float = 0.0  # clip the global gradient norm of each optimizer to this (0 = off)
    grad_accum: int = 1  # micro-batches accumulated per optimizer step
    # Effective batch of the contrastive terms, in content-style pairs over all micro-batches and ranks: 0 = each
    # micro-batch alone; N = logit accumulation (train/contrastive.py) over N / (batch_size * world_size)
    # micro-batches per step (that many replace grad_accum). The model must provide contrastive_embeddings().
    contrastive_batch: int = 0
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)

    def __post_init__(self) -> None:
        if self.grad_accum < 1:
            raise ValueError(f"optim.grad_accum must be >= 1, got {self.grad_accum}")
        if self.contrastive_batch < 0:
            raise ValueError(f"optim.contrastive_batch must be >= 0, got {self.contrastive_batch}")


@dataclass
class ScheduleConfig:
    max_steps: int = 160_000  # optimizer steps to train for
    warmup_steps: int = 0  # linear learning-rate warm-up
    lr_decay: float = 5e-5  # inverse decay lr0 / (1 + lr_decay * step), as in PAMA / ContraAST (0 = constant)
    d_every: int = 1  # discriminator update every N generator steps (0 = never)
    overfit_batches: bool = False  # debugging: train every step on the first step's micro-batches (loss must fall)


@dataclass
class LoggingConfig:
    dir: str = "runs/neat"  # run directory: TensorBoard events, metrics.jsonl, checkpoints/ (unless set below)
    log_every: int = 10  # scalars to TensorBoard and metrics.jsonl every N steps
    image_every: int = 500  # image grids (content, style, prior, output) every N steps (0 = off)
    max_images: int = 4  # images per grid row


@dataclass
class CheckpointConfig:
    dir: str = ""  # checkpoint directory ("" = {logging.dir}/checkpoints)
    every: int = 1000  # write a checkpoint every N steps (and at the end)
    keep: int = 3  # newest checkpoints kept (0 = keep all)
    at_start: bool = False  # also write the untrained model as the step-0 checkpoint (a fresh run's baseline)


@dataclass
class DistributedConfig:
    backend: str = "auto"  # "auto" = nccl on CUDA, gloo on CPU
    num_workers: int = 1  # Ray Train workers (--launcher ray); torchrun takes its world size from the launcher
    use_gpu: bool = False  # Ray Train: one GPU per worker
    device: str = "auto"  # "auto" = cuda when available, else cpu


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    seed: int = 0  # model initialisation and training randomness (the loader has its own seed)
    threads: int = 0  # torch CPU threads per process (0 = leave torch's default)



def pin_local_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its local data, log and checkpoint paths made absolute (URLs kept), so the config means the same
    in a worker process that runs in another directory (Ray Train)."""
    import os

    def fix(p: str) -> str:
        return p if not p or "://" in p else os.path.abspath(p)

    cfg.data.root = [fix(r) for r in cfg.data.root] if isinstance(cfg.data.root, list) else fix(cfg.data.root)
    cfg.logging.dir = fix(cfg.logging.dir)
    cfg.checkpoint.dir = fix(cfg.checkpoint.dir)
    return cfg

@dataclass
class EvalConfig:
    """What a style-transfer evaluation runs on and how it measures: ``bbst evaluate`` and ``bbst compare`` extend it,
    ``train.evaluation.prepare`` reads it."""

    protocol: str = ""  # protocol YAML (train/protocols/, bbst make-protocol); or --pairs / --content+--style
    pairs: str = ""  # CSV with content,style columns (paths relative to the CSV allowed)
    content: str = ""  # or: folder of content images (every content x style pair)
    style: str = ""  # folder (or file) of style images, with --content
    models: list[str] = field(default_factory=list)  # NAME=CHECKPOINT rows stylised here (any registered model)
    sizes: list[str] = field(default_factory=list)  # override the protocol's quality sizes (WxH, max:N, native)
    timing_sizes: list[str] = field(default_factory=list)  # override the protocol's timing sizes (WxH)
    timing_repeats: int = 0  # override the protocol's timed calls per size (0 = protocol's)
    timing_warmup: int = -1  # override the protocol's warm-up calls per size (-1 = protocol's)
    no_timing: bool = False  # skip the speed table
    vgg_weights: str = "auto"  # VGG-19 for the Gram distance ("auto" = local torch cache / $BBST_VGG19_WEIGHTS)
    lpips_net: str = "alex"  # LPIPS backbone: "alex" (LPIPS default) or "vgg"
    lpips_backbone: str = "auto"  # LPIPS backbone weights file ("auto" = torch hub checkpoints dir)
    inception_weights: str = "auto"  # InceptionV3 weights for SIFID ("auto" = torch hub checkpoints dir)
    random_metrics: bool = False  # random-init metric backbones: smoke tests only, numbers are meaningless
    device: str = "auto"  # "auto", "cpu", "cuda"...
    out: str = "eval"  # output folder



@dataclass
class EvaluateConfig(EvalConfig):
    """``bbst evaluate``: checkpoints and saved outputs of other methods on one protocol."""

    outputs: list[str] = field(default_factory=list)  # NAME=DIR rows of precomputed <content>_stylized_<style>.png
    no_blur_row: bool = False  # add "NAME (no prior blurring)" per checkpoint with a blur control (blur=0), Table 1
    alpha: float = 1.0  # style strength for checkpoint rows


@dataclass
class CompareConfig(EvalConfig):
    """``bbst compare``: every model on one protocol, MetaStyle adapted per style, optional deception rate."""

    timing_sizes: list[str] = field(default_factory=lambda: ["512x512", "1920x1080"])  # seconds-per-image columns
    out: str = "comparison"  # output folder
    adapt_steps: int | None = None  # MetaStyle adaptation steps per style (None = the model's adapt_steps)
    adapt_content: str = ""  # MetaStyle adaptation content folder: training-set images, not the protocol's
    adapt_crop: int = 256  # MetaStyle adaptation crop size in pixels
    adapt_batch: int = 4  # MetaStyle adaptation crops per step
    adapt_seed: int = 0  # seed of the adaptation crops
    artist_model: str = ""  # artist classifier for the deception rate (torch.export .pt2 or TorchScript file)
    artists: str = ""  # CSV style,artist: the artist of each style image (nearest: default from the references)
    artist_names: str = ""  # text file, one artist per line in the model's logit order (classify mode)
    deception_mode: Literal["classify", "nearest"] = "nearest"  # artist of the nearest reference painting, or arg-max
    deception_references: str = ""  # nearest: held-out artists' paintings, ARTIST/ subfolders or image,artist CSV
    deception_min_paintings: int = 30  # nearest mode: keep artists with at least this many references (paper: 30)
    artist_input_size: int = 224  # square input size of the artist model
    grid_cell: int = 192  # grid.png cell size in pixels

    def __post_init__(self):
        if self.adapt_crop < 1 or self.adapt_batch < 1:
            raise ValueError(f"adapt_crop and adapt_batch must be >= 1, got {self.adapt_crop}, {self.adapt_batch}")

# How EvalConfig's options read on the command line (core.cli.config_parser's ``flags``): the evaluation commands
# share them, so --model, --sizes ... mean the same in each.
EVAL_FLAGS: dict[str, dict] = {
    **{name: {"metavar": "PATH"} for name in ("protocol", "pairs", "content", "style")},
    "models": {"flag": "--model", "action": "append", "metavar": "NAME=CKPT"},
    "sizes": {"metavar": "SIZE"},
    "timing_sizes": {"metavar": "WxH"},
    **{name: {"action": "store_true"} for name in ("no_timing", "random_metrics")},
}


@dataclass
class StylizeConfig:
    """``bbst stylize``: one checkpoint on content x style pairs (``train.inference.stylize_files``)."""

    checkpoint: str = ""  # trainer checkpoint (model_name, model_config, model state dict)
    content: str = ""  # content image or folder of images
    style: str = ""  # style image or folder of images
    out: str = ""  # output file (single pair) or folder
    alpha: float = 1.0  # style strength: 0 = content, 1 = as trained, > 1 amplifies the style
    blur: float | None = None  # prior blur strength: None = as trained, 0 = off, 0.5 = half the window sizes (NeAT)
    prior_weight: float | None = None  # prior weighting: None = as trained, 0 = decoded deltas alone (NeAT)
    steps: int | None = None  # repeated applications of the transfer: None = 1 (RAST)
    max_side: int = 3840  # content larger than this (long side) is downscaled to it; 3840 = 4K UHD
    style_size: int = 512  # style images are resized to this long side (bounds attention cost; 0 = keep)
    attention_mode: str | None = None  # override the checkpoint's attention ("chunked", "sdpa", "full")
    attention_chunk: int | None = None  # override content tokens per attention chunk
    max_style_tokens: int | None = None  # override the style-token cap
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"...

@dataclass
class MakeProtocolConfig:
    """``bbst make-protocol``: an evaluation protocol from your images, or a tiny generated one."""

    template: str | None = None  # protocol YAML (or packaged name, e.g. neat_paper) whose settings are kept
    content: str | None = None  # folder, image or list file of content images
    style: str | None = None  # folder, image or list file of style images
    n_content: int | None = None  # content images to pick (none = the template's, else all)
    n_style: int | None = None  # style images to pick (none = the template's, else all)
    seed: int | None = None  # seed of the random pick (none = the template's, else 0)
    name: str | None = None  # protocol name written into the tables (none = the template's)
    out: str | None = None  # protocol file to write
    tiny: str | None = None  # instead: write a tiny generated protocol (and its images) in this folder

@dataclass
class VstStylesConfig:
    """``bbst vst-styles``: render a variational model's style space (``train.style_space.render_style_space``)."""

    checkpoint: str = ""  # trainer checkpoint of a variational model
    content: list[str] = field(default_factory=list)  # content image(s), one grid row each
    out: str = ""  # output PNG grid; <out>.json records the codes
    max_side: int = 512  # content long side in pixels
    cell: int = 256  # grid cell size in pixels
    device: str = "auto"  # auto, cpu, cuda, cuda:1...
    num: int = 8  # sample: styles drawn from the prior
    seed: int = 0  # sample: random seed of the draws
    temperature: float = 1.0  # sample: scale of the prior's standard deviation
    style: list[str] = field(default_factory=list)  # interpolate: the two style images
    steps: int = 7  # interpolate: points from style A to style B, ends included
    style_size: int = 512  # interpolate: style long side loaded (the model encodes it at its own style_size)


@dataclass
class MetaStyleAdaptConfig:
    """``bbst metastyle adapt`` (``train.style_space.adapt_checkpoint``)."""

    checkpoint: str = ""  # meta-trained MetaStyle checkpoint, from the trainer
    style: str = ""  # style image
    content: str = ""  # content image or folder the adaptation steps crop from
    out: str = ""  # adapted checkpoint to write
    steps: int | None = None  # update steps
    lr: float | None = None  # Adam learning rate
    params: Literal["all", "norm"] | None = None  # adapt all parameters or only the norm scales and shifts
    crop: int = 256  # content crop size in pixels
    batch: int = 4  # content crops per step
    style_size: int = 512  # style long side in pixels
    seed: int = 0  # seed of the crop sampling
    device: str = "auto"  # auto, cpu, cuda, cuda:1...


@dataclass
class MetaStyleStylizeConfig:
    """``bbst metastyle stylize`` (``train.style_space.stylize_adapted``)."""

    checkpoint: str = ""  # adapted checkpoint
    content: str = ""  # content image or folder
    out: str = ""  # output file (one image) or folder
    max_side: int = 3840  # content larger than this (long side) is downscaled to it
    device: str = "auto"  # auto, cpu, cuda, cuda:1...


@dataclass
class MetaStyleInterpolateConfig:
    """``bbst metastyle interpolate`` (``train.style_space.interpolate_checkpoints``)."""

    checkpoint: list[str] = field(default_factory=list)  # two or more adapted checkpoints
    content: list[str] = field(default_factory=list)  # content image(s), one grid row each
    out: str = ""  # PNG grid of the mixtures along the path through every model
    steps: int = 5  # points per leg of the path (model k to model k+1), ends included
    save: str = ""  # also save the mixture given by --save-weights as a checkpoint
    save_weights: list[float] = field(default_factory=list)  # one weight per checkpoint, >= 0, summing to 1
    max_side: int = 512  # content long side in pixels
    device: str = "auto"  # auto, cpu, cuda, cuda:1...


@dataclass
class LossAnalysisConfig:
    """What both studies of ``bbst balanced-loss-analysis`` share (``train.style_loss_analysis``)."""

    out: str = ""  # output folder
    size: int = 512  # long side of every image in pixels, aspect kept
    vgg_weights: str = "auto"  # VGG-16 weights file (auto = the local torch cache or $BBST_VGG16_WEIGHTS)
    random_vgg: bool = False  # random small VGG-16: smoke runs only, the numbers mean nothing
    device: str = "auto"  # auto, cpu, cuda, cuda:1...


@dataclass
class LossCorrelationConfig(LossAnalysisConfig):
    """``bbst balanced-loss-analysis correlation``: Study III (``train.style_loss_analysis.correlation_run``)."""

    images: str = ""  # folder of images to sample (S, P) pairs from
    pairs: int = 2000  # pairs to sample (the paper: 200,000)
    seed: int = 0  # pair sampling seed


@dataclass
class LossStudiesConfig(LossAnalysisConfig):
    """``bbst balanced-loss-analysis studies``: Studies I, II, IV, V (``train.style_loss_analysis.rating_run``)."""

    labels: str = ""  # ratings: image, style, rating (under/good/ok/over), rater columns
