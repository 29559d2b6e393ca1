"""Whether a style-transfer model can stylise at all: one line saying why not (random loss network, too few steps).

A run whose VGG encoder or loss network is random-init (the tiny test variants, or a config that sets the weights
to ``null``) learns to reproduce its content, not a style; so does any run stopped after a few steps. Training and
``bbst stylize`` say so in one line instead of leaving the user to wonder why the output looks like the input.
"""

from __future__ import annotations

from typing import Any

# Fewer optimiser steps than this leave the output of every model here close to its content (or to noise). A run of
# the first-image recipe (docs/first-image.md) takes about this many steps before its output shows the style.
MIN_STYLISING_STEPS = 300
# model_config keys naming VGG weights (encoder, loss network): None means random-init
WEIGHT_KEYS = ("vgg_weights", "loss_vgg_weights")
# model_config keys of VGG channel multipliers: anything below 1.0 cannot hold pretrained weights
WIDTH_KEYS = ("vgg_width", "loss_vgg_width")


def cannot_stylise(model_config: dict[str, Any], steps: int | None = None) -> str | None:
    """Why a model with ``model_config`` trained (or to be trained) for ``steps`` cannot stylise; None when it can.

    A key of the config that the model does not have is not looked at (a model without a VGG has nothing random
    to report).
    """
    reasons = []
    random = [f"{k}={model_config[k]}" for k in WEIGHT_KEYS if k in model_config and model_config[k] is None]
    random += [f"{k}={model_config[k]:g}" for k in WIDTH_KEYS
               if isinstance(model_config.get(k), (int, float)) and model_config[k] < 1.0]
    if random:
        reasons.append(f"its VGG network is random-init ({', '.join(random)}), so its losses measure no style; "
                       "`bbst weights` shows where VGG weights go")
    if steps is not None and steps < MIN_STYLISING_STEPS:
        reasons.append(f"{steps} training steps are too few (a visible style takes at least {MIN_STYLISING_STEPS})")
    return "; ".join(reasons) or None
