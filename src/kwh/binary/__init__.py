"""Binary networks: sign() weights and activations, straight-through gradients, XNOR inference.

Courbariaux, Hubara et al. 2016 ("Binarized Neural Networks"), with XNOR-Net's per-channel
scales (Rastegari et al. 2016) as an option. :func:`binarize_` converts a model in place;
:func:`clip_latent_` keeps the latent weights in [-1, 1] while training; :mod:`.xnor` is the
exact integer reference (XNOR and popcount) that kwh.energy prices.

A leaf: imports only torch and kwh.errors, so the core packages may read its layers.
"""

from kwh.binary.convert import BinarizeConfig, BinarizeReport, binarize_
from kwh.binary.layers import (
    INPUTS,
    SCALES,
    BinaryActivation,
    BinaryConv2d,
    BinaryLayer,
    BinaryLinear,
    clip_latent_,
    clip_on_step,
    sign,
    sign_ste,
    ternary_ste,
)
from kwh.binary.xnor import pack_signs, popcount, xnor_conv2d, xnor_linear, xnor_matmul

__all__ = [
    # conversion and training
    "binarize_", "BinarizeConfig", "BinarizeReport", "clip_latent_", "clip_on_step",
    # layers and estimators
    "BinaryLayer", "BinaryLinear", "BinaryConv2d", "BinaryActivation", "sign", "sign_ste",
    "ternary_ste", "INPUTS", "SCALES",
    # exact integer reference
    "pack_signs", "popcount", "xnor_matmul", "xnor_linear", "xnor_conv2d",
]
