"""MetaStyle: a small feed-forward transformation network meta-trained to adapt to any style in a few steps.

Zhang, Zhu & Zhu (AAAI 2019) pose style transfer as bilevel optimisation: the inner problem adapts the network's
parameters w to one style by T gradient steps on training content images, starting from the shared initialisation
theta; the outer problem trains theta so that the adapted w_{s,T} does well on held-out content for that style.
After meta-training, 100-200 steps adapt theta to a new style; the adapted network is an ordinary fast feed-forward
stylisation network, and convex combinations of adapted parameters interpolate between styles.

The paper's formulas are followed where it gives them: the bilevel problem with the gradient of the outer loss taken
through the T inner steps (second order; ``second_order: false`` is the first-order approximation), the perceptual
loss alpha * content + beta * sum_i ||G(phi_i(I_s)) - G(phi_i(I_x))||_F^2 with G = psi psi^T / CHW, Psi = identity.
docs/models.md names every choice the paper leaves open and what this module picks.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from train import losses as L
from train.models import build_from_config, register_model
from train.models.johnson import TransformerNet, norm_parameter_names
from train.models.vgg import VGG16_STYLE_LAYERS, build_vgg

log = logging.getLogger(__name__)
# Style losses MetaStyle can use: the paper's sum of squared Frobenius norms, or the repository's other style losses.
STYLE_LOSSES = {"gram_frobenius": L.gram_frobenius_style, **L.STYLE_LOSSES}


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
    style_loss: str = "gram_frobenius"  # the paper's sum over layers of ||G(S) - G(X)||_F^2; or a STYLE_LOSSES name
    w_content: float = 1.0  # alpha of the perceptual loss
    # beta. The paper gives none; None = measured on the first meta-batch as content / style loss of theta's
    # outputs (so the two terms start at the same magnitude), then kept fixed and stored in the checkpoint
    w_style: float | None = None
    # --- bilevel meta-training (inside generator_step; the trainer's optimizer is the outer one)
    inner_steps: int = 1  # T: inner gradient steps per style (the paper: 1 to 5)
    inner_lr: float = 1e-4  # delta: inner SGD step size (not given by the paper)
    inner_params: str = "all"  # parameters w the inner loop adapts: "all" (the paper) or "norm" (instance-norm only)
    second_order: bool = True  # differentiate through the inner gradients (the paper's bilevel gradient)
    # --- fast adaptation to a new style (adapt())
    adapt_steps: int = 200  # update steps on content images with one style (the paper: 100 to 200)
    adapt_optimizer: str = "adam"  # "adam" (adapt_lr) or "sgd" (the inner loop's rule: step inner_lr)
    adapt_lr: float = 1e-3  # Adam learning rate of the adaptation (adapt_optimizer "adam")
    adapt_params: str = "all"  # "all" or "norm"
    adapted_style: str = ""  # set by adapt(): the style this network was adapted to ("" = meta-trained theta)

    def __post_init__(self):
        if self.style_loss not in STYLE_LOSSES:
            raise ValueError(f"style_loss {self.style_loss!r} not in {sorted(STYLE_LOSSES)}")
        if self.w_style is not None and self.w_style <= 0:
            raise ValueError(f"w_style must be > 0 (or None to measure it), got {self.w_style}")
        if self.adapt_optimizer not in ("adam", "sgd"):
            raise ValueError(f"adapt_optimizer {self.adapt_optimizer!r} not in ('adam', 'sgd')")
        for name in ("inner_params", "adapt_params"):
            if getattr(self, name) not in ("all", "norm"):
                raise ValueError(f"{name} {getattr(self, name)!r} not in ('all', 'norm')")
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.inner_steps}")
        self.style_layers = tuple(self.style_layers)


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
        # beta; 0 = not measured yet (w_style None). A buffer, so checkpoints carry the measured value.
        self.register_buffer("beta", torch.tensor(float(cfg.w_style or 0.0)))

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
                 "style": STYLE_LOSSES[cfg.style_loss](fo, sf, cfg.style_layers)}
        if float(self.beta) <= 0:  # first meta-batch: measure beta (w_style None), then keep it
            self.beta.fill_(L.matching_style_weight(terms["content"], terms["style"], cfg.w_content))
        return cfg.w_content * terms["content"] + self.beta * terms["style"], terms

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
        """A copy of this model adapted to ``style`` (1, 3, h, w) by ``steps`` updates of the perceptual loss.

        The update is ``adapt_optimizer``'s: Adam at ``lr`` (default ``adapt_lr``), or plain gradient steps of size
        ``inner_lr``, the rule meta-training anticipates (``lr`` is then ignored).

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
        opt = (torch.optim.Adam(trainable, lr=lr) if cfg.adapt_optimizer == "adam"
               else torch.optim.SGD(trainable, lr=cfg.inner_lr))
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


def interpolation_path(num_models: int, steps: int) -> list[list[float]]:
    """Mixture weights along the path through every adapted model in order: ``steps`` points (ends included) from
    model 0 to model 1, then on to model 2, and so on; shared ends appear once. Each weight vector is convex."""
    if num_models < 2 or steps < 2:
        raise ValueError(f"need at least two models and two steps, got {num_models} and {steps}")
    path = []
    for k in range(num_models - 1):
        for i in range(0 if k == 0 else 1, steps):
            t = i / (steps - 1)
            w = [0.0] * num_models
            w[k], w[k + 1] = 1.0 - t, t
            path.append(w)
    return path


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
