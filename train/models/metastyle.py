"""MetaStyle: a small feed-forward transformation network meta-trained to adapt to any style in a few steps.

Zhang, Zhu & Zhu (AAAI 2019) pose style transfer as bilevel optimisation: the inner problem adapts the network's
parameters w to one style by T gradient steps on training content images, starting from the shared initialisation
theta; the outer problem trains theta so that the adapted w_{s,T} does well on held-out content for that style.
After meta-training, 100-200 steps adapt theta to a new style; the adapted network is an ordinary fast feed-forward
stylisation network, and convex combinations of adapted parameters interpolate between styles.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from train import losses as L
from train.models import build_from_config, register_model
from train.models.vgg import VGG16_STYLE_LAYERS, build_vgg

log = logging.getLogger(__name__)
STYLE_WEIGHTS = {"gram": 2.5e3, "balanced_gram": 2.5, "mean_std": 3.0}  # style losses summed over 4 layers


@dataclass
class MetaStyleConfig:
    """Everything needed to rebuild a MetaStyle model; ``model_config()`` returns it as a dict."""

    # --- transformation network (Johnson et al. 2016: ~1.68M parameters at width 1)
    width: float = 1.0  # channel multiplier (32/64/128 channels at 1.0)
    res_blocks: int = 5  # residual blocks at stride 4
    # --- loss network (VGG-16 perceptual loss of Johnson et al., used by MetaStyle)
    loss_arch: str = "vgg16"  # "vgg16" or "vgg19"
    loss_vgg_weights: str | None = "auto"  # "auto" = local torch cache / $BBST_VGG16_WEIGHTS; a path; None = random
    vgg_width: float = 1.0  # channel multiplier of the loss VGG (1.0 with real weights; tiny for tests)
    style_layers: tuple[str, ...] = VGG16_STYLE_LAYERS  # relu1_2, relu2_2, relu3_3, relu4_3
    content_layer: str = "relu2_2"  # content tap (Johnson et al.)
    style_loss: str = "gram"  # "gram" (Gram of C*H*W-normalised features), "balanced_gram" or "mean_std"
    w_content: float = 1.0  # alpha of the perceptual loss
    w_style: float | None = None  # beta; None = STYLE_WEIGHTS[style_loss]
    # --- bilevel meta-training (inside generator_step; the trainer's optimizer is the outer one)
    inner_steps: int = 1  # T: inner gradient steps per style (the paper: 1 to 5)
    inner_lr: float = 1e-4  # delta: inner SGD step size
    inner_params: str = "all"  # parameters the inner loop adapts: "all" or "norm" (instance-norm scale/shift only)
    second_order: bool = False  # differentiate through the inner gradients (create_graph); False = first order
    # --- fast adaptation to a new style (adapt())
    adapt_steps: int = 200  # update steps on content images with one style (the paper: 100 to 200)
    adapt_lr: float = 1e-3  # Adam learning rate of the adaptation
    adapt_params: str = "all"  # "all" or "norm"
    adapted_style: str = ""  # set by adapt(): the style this network was adapted to ("" = meta-trained theta)

    def __post_init__(self):
        L.style_loss_fn(self.style_loss)
        if self.w_style is None:
            self.w_style = STYLE_WEIGHTS[self.style_loss]
        for name in ("inner_params", "adapt_params"):
            if getattr(self, name) not in ("all", "norm"):
                raise ValueError(f"{name} {getattr(self, name)!r} not in ('all', 'norm')")
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.inner_steps}")
        self.style_layers = tuple(self.style_layers)


# ----------------------------------------------------------------------------------------- transformation network
def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2, padding_mode="reflect")


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1, self.n1 = _conv(c, c, 3), nn.InstanceNorm2d(c, affine=True)
        self.c2, self.n2 = _conv(c, c, 3), nn.InstanceNorm2d(c, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.n2(self.c2(F.relu(self.n1(self.c1(x)))))


class _UpConv(nn.Module):
    """Nearest upsampling then a convolution (instead of a transposed conv: no checkerboard artefacts)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = _conv(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TransformerNet(nn.Module):
    """Johnson et al.'s image transformation network: 9x9 conv, two stride-2 convs, residual blocks at stride 4,
    two upsampling convs, 9x9 conv to RGB; instance norm with learnt scale/shift; sigmoid output in [0, 1]."""

    def __init__(self, width: float = 1.0, res_blocks: int = 5):
        super().__init__()
        c1, c2, c3 = (max(2, round(c * width)) for c in (32, 64, 128))

        def block(conv: nn.Module, c: int) -> list[nn.Module]:
            return [conv, nn.InstanceNorm2d(c, affine=True), nn.ReLU()]

        self.net = nn.Sequential(
            *block(_conv(3, c1, 9), c1), *block(_conv(c1, c2, 3, 2), c2), *block(_conv(c2, c3, 3, 2), c3),
            *(_Residual(c3) for _ in range(res_blocks)),
            *block(_UpConv(c3, c2), c2), *block(_UpConv(c2, c1), c1),
            _conv(c1, 3, 9),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        return torch.sigmoid(self.net(x))[..., :h, :w]


def norm_parameter_names(net: nn.Module) -> set[str]:
    """Names of the instance-norm scale/shift parameters (the style-specific ones per Dumoulin et al.)."""
    return {f"{mod_name}.{p}" if mod_name else p for mod_name, mod in net.named_modules()
            if isinstance(mod, nn.InstanceNorm2d) for p, _ in mod.named_parameters(recurse=False)}


# ------------------------------------------------------------------------------------------------------------ model
class MetaStyle(nn.Module):
    """Transformation network + frozen VGG loss network, with meta-training, adaptation and interpolation."""

    def __init__(self, cfg: MetaStyleConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = TransformerNet(cfg.width, cfg.res_blocks)
        self.loss_vgg = build_vgg(cfg.loss_arch, cfg.loss_vgg_weights, cfg.vgg_width)
        self._taps = tuple(dict.fromkeys(cfg.style_layers + (cfg.content_layer,)))
        self._norm_names = norm_parameter_names(self.transformer)

    # ------------------------------------------------------------------------------------------ trainer interface
    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.transformer.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return []

    def model_config(self) -> dict:
        return dataclasses.asdict(self.cfg)

    def forward(self, batch: dict[str, torch.Tensor], step: str = "generator"):
        if step == "generator":
            return self.generator_step(batch)
        return self.discriminator_step(batch)

    def discriminator_step(self, batch: dict[str, torch.Tensor]):
        raise RuntimeError("MetaStyle has no discriminator")

    # ------------------------------------------------------------------------------------------------- losses
    def style_targets(self, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """VGG features of the style image(s) at the style taps (no gradient)."""
        with torch.no_grad():
            return self.loss_vgg(style, self.cfg.style_layers)

    def perceptual_loss(self, out: torch.Tensor, content: torch.Tensor,
                        style_feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """alpha * content + beta * style loss; ``style_feats`` of one style (batch 1) or one per output."""
        cfg = self.cfg
        with torch.no_grad():
            fc = self.loss_vgg(content, (cfg.content_layer,))[cfg.content_layer]
        fo = self.loss_vgg(out, self._taps)
        n = out.shape[0]
        sf = {k: v.expand(n, -1, -1, -1) if v.shape[0] == 1 else v for k, v in style_feats.items()}
        terms = {"content": L.content_perceptual(fo[cfg.content_layer], fc),
                 "style": L.style_loss_fn(cfg.style_loss)(fo, sf, cfg.style_layers)}
        return cfg.w_content * terms["content"] + cfg.w_style * terms["style"], terms

    # ------------------------------------------------------------------------------------------- meta-training
    def _fast_names(self, which: str) -> list[str]:
        names = [n for n, _ in self.transformer.named_parameters()]
        return names if which == "all" else [n for n in names if n in self._norm_names]

    def inner_adapt(self, support: torch.Tensor, style_feats: dict[str, torch.Tensor],
                    ) -> dict[str, torch.Tensor]:
        """T inner SGD steps from theta on ``support`` content for one style; returns the fast weights w_{s,T}.

        Second order keeps the graph of each inner gradient so the outer gradient flows through it; first order
        treats the inner gradients as constants (w_T still depends on theta through the identity initialisation).
        """
        cfg = self.cfg
        params = dict(self.transformer.named_parameters())
        fast = {n: params[n] for n in self._fast_names(cfg.inner_params)}
        for _ in range(cfg.inner_steps):
            out = functional_call(self.transformer, {**params, **fast}, (support,))
            loss, _ = self.perceptual_loss(out, support, style_feats)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=cfg.second_order)
            fast = {n: w - cfg.inner_lr * g for (n, w), g in zip(fast.items(), grads)}
        return {**params, **fast}

    def generator_step(self, batch: dict[str, torch.Tensor]):
        """Outer objective of one meta-batch: each style in the batch is a task.

        The content batch is split in two: the first half is the inner (training) content, the second half the
        held-out (query) content of the outer objective; a batch of one content image serves as both.
        """
        content, style = batch["content"], batch["style"]
        b = content.shape[0]
        support, query = (content[: b // 2], content[b // 2:]) if b > 1 else (content, content)
        outer, logs_terms = 0.0, {"content": 0.0, "style": 0.0}
        for k in range(style.shape[0]):
            sf = self.style_targets(style[k:k + 1])
            fast = self.inner_adapt(support, sf)
            out = functional_call(self.transformer, fast, (query,))
            loss, terms = self.perceptual_loss(out, query, sf)
            outer = outer + loss / style.shape[0]
            for t in logs_terms:
                logs_terms[t] += float(terms[t].detach()) / style.shape[0]
        logs = {"outer": float(outer.detach()), **logs_terms}
        images = {"content": query.detach(), "style": style.detach(), "output": out.detach()}
        return outer, logs, images

    # ------------------------------------------------------------------------------------------ fast adaptation
    def adapt(self, style: torch.Tensor, content_batches: Callable[[int], torch.Tensor] | torch.Tensor,
              steps: int | None = None, lr: float | None = None, params: str | None = None,
              style_name: str = "", on_step: Callable[[int, float], None] | None = None,
              ) -> tuple[MetaStyle, dict]:
        """A copy of this model adapted to ``style`` (1, 3, h, w) by ``steps`` Adam updates of the perceptual loss.

        ``content_batches`` is a tensor of content images (used as one fixed batch) or ``f(step) -> batch``.
        Returns (adapted model in eval mode, {"losses": per-step loss, "seconds": wall time}).
        """
        cfg = self.cfg
        steps = cfg.adapt_steps if steps is None else steps
        lr = cfg.adapt_lr if lr is None else lr
        which = cfg.adapt_params if params is None else params
        model = copy.deepcopy(self)
        model.cfg = dataclasses.replace(cfg, adapted_style=style_name or "style")
        names = set(model._fast_names(which))
        trainable = [p for n, p in model.transformer.named_parameters() if n in names]
        opt = torch.optim.Adam(trainable, lr=lr)
        sf = model.style_targets(style)
        losses = []
        t0 = time.perf_counter()
        model.train()
        with torch.enable_grad():
            for i in range(steps):
                batch = content_batches(i) if callable(content_batches) else content_batches
                loss, _ = model.perceptual_loss(model.transformer(batch), batch, sf)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if on_step is not None:
                    on_step(i, losses[-1])
        if style.is_cuda:
            torch.cuda.synchronize(style.device)
        return model.eval(), {"losses": losses, "seconds": time.perf_counter() - t0}

    @torch.no_grad()
    def stylize(self, content: torch.Tensor, style: torch.Tensor | None = None, alpha: float = 1.0,
                blur: float | None = None) -> torch.Tensor:
        """Feed-forward stylisation with the current (adapted) parameters; the style this network renders is fixed
        by :meth:`adapt`, so ``style`` is not read. ``alpha`` blends the output with the content in pixel space."""
        if blur:
            raise ValueError("MetaStyle has no content prior to blur")
        out = self.transformer(content)
        return (content + alpha * (out - content)).clamp(0, 1) if alpha != 1.0 else out


def interpolate_models(models: list[MetaStyle], weights: list[float]) -> MetaStyle:
    """Convex combination of adapted models' transformation-network parameters (MetaStyle's style interpolation)."""
    if len(models) != len(weights) or not models:
        raise ValueError("interpolate_models needs one weight per model")
    if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"interpolation weights must be >= 0 and sum to 1, got {weights}")
    out = copy.deepcopy(models[0])
    states = [m.transformer.state_dict() for m in models]
    mixed = {k: sum(w * s[k].float() for w, s in zip(weights, states)).to(states[0][k].dtype) for k in states[0]}
    out.transformer.load_state_dict(mixed)
    names = [m.cfg.adapted_style or "theta" for m in models]
    out.cfg = dataclasses.replace(models[0].cfg,
                                  adapted_style=" + ".join(f"{w:g}*{n}" for w, n in zip(weights, names)))
    return out.eval()


# ---------------------------------------------------------------------------------------- adaptation content
def fit_for_crops(img: torch.Tensor, crop: int, max_side: int | None = None) -> torch.Tensor:
    """An adaptation content image: long side at most ``max_side`` (default ``max(2 * crop, 512)``), then upscaled
    if needed so its short side is at least ``crop`` (every image can give a full ``crop`` x ``crop`` crop)."""
    max_side = max(2 * crop, 512) if max_side is None else max_side
    h, w = img.shape[-2:]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        img = F.interpolate(img, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", antialias=True)
        h, w = img.shape[-2:]
    if min(h, w) < crop:
        s = crop / min(h, w)
        img = F.interpolate(img, size=(max(crop, round(h * s)), max(crop, round(w * s))), mode="bilinear")
    return img


def load_adaptation_contents(paths: list[Path], crop: int, held_out: list[Path] = ()) -> list[torch.Tensor]:
    """Adaptation content images (:func:`fit_for_crops`) from ``paths``, unreadable ones skipped with a warning.

    MetaStyle adapts on content images of its training set; an image that is also one of ``held_out`` (the
    evaluation's test images: the same file, or the same bytes under another name) raises ValueError naming it,
    before any image is decoded.
    """
    from train.inference import load_image

    def digest(p: Path) -> str:
        return hashlib.sha1(Path(p).read_bytes()).hexdigest()

    held = {Path(p).resolve() for p in held_out}
    held_digests = {digest(p) for p in held if p.is_file()}
    for p in paths:
        if Path(p).resolve() in held or (Path(p).is_file() and digest(p) in held_digests):
            raise ValueError(f"{p} is one of the evaluation's test images: adapt on training content instead")
    images = []
    for p in paths:
        try:
            images.append(fit_for_crops(load_image(p), crop))
        except (FileNotFoundError, ValueError) as exc:
            log.warning("adaptation content: skipping %s", exc)
    return images


def random_crops(images: list[torch.Tensor], crop: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` random ``crop`` x ``crop`` crops of randomly chosen images (each at least ``crop`` on its short side,
    see :func:`fit_for_crops`), drawn with ``gen`` so an adaptation is reproducible."""
    out = []
    for _ in range(batch):
        img = images[int(torch.randint(len(images), (1,), generator=gen))]
        h, w = img.shape[-2:]
        y = int(torch.randint(h - crop + 1, (1,), generator=gen))
        x = int(torch.randint(w - crop + 1, (1,), generator=gen))
        out.append(img[..., y:y + crop, x:x + crop])
    return torch.cat(out)


# --------------------------------------------------------------------------------------------------------- registry
_TINY = {"width": 1 / 8, "res_blocks": 1, "loss_vgg_weights": None, "vgg_width": 1 / 16, "adapt_steps": 20}


def _build(defaults: dict, overrides: dict) -> MetaStyle:
    return build_from_config(MetaStyle, MetaStyleConfig, "MetaStyle", defaults, overrides)


@register_model
def metastyle(**kwargs) -> MetaStyle:
    """MetaStyle with Johnson's transformation network and a VGG-16 perceptual loss (weights from the local cache)."""
    return _build({}, kwargs)


@register_model
def metastyle_tiny(**kwargs) -> MetaStyle:
    """Random-init tiny MetaStyle for CPU tests."""
    return _build(_TINY, kwargs)
