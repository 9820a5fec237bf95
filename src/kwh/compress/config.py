"""CompressConfig: how kwh.compress prunes, folds and quantizes a trained model."""

from __future__ import annotations

from dataclasses import dataclass, field

# A float32 holds every integer up to 2**24 exactly, so a weight int * 2**-t stays exact in a
# float32 tensor when the integer has at most 24 magnitude bits: kwh_bits <= 1 + 24.
MAX_TOTAL_BITS = 25
MAX_FRAC_BITS = 23  # clip of t_ij (Louizos et al. 2017, sec. 4: 23 mantissa bits of a float32)
MIN_TOTAL_BITS = 2  # one sign bit and at least one magnitude bit
FLOAT_BITS = 12  # magnitude bits of the largest value of each bias / norm / embedding tensor
BITS_SEARCHES = ("fit", "raise", "off")
PRUNE_SEARCHES = ("off", "fit", "fit-macs")


@dataclass
class CompressConfig:
    """Options of ``kwh.compress``; defaults reproduce the paper's procedure.

    threshold:   log-alpha pruning threshold for every Bayesian layer (None: each prior's default).
    thresholds:  per-layer overrides by qualified layer name (win over ``threshold``).
    quantize:    round the posterior means to each layer's fixed point (False: keep float32,
                 for checking that pruning alone is exact).
    max_bits:    cap on the total bits of any layer (1 sign + magnitude bits).
    bits:        total bits per layer by name; the fraction bits are then chosen to fit the
                 layer's largest weight.
    plain_bits:  total bits of Linear/Conv2d layers that have no posterior (not Bayesian).
    input_shape: one example's shape, e.g. (1, 28, 28); needed for conv nets unless eval
                 data are given (then the first batch tells).
    fold_batchnorm: fold BatchNorm into the conv/linear right before it (eval statistics).
    bits_search: with guard data given to kwh.compress (held out of the training data),
                 start from the posterior rule's bits and: "fit" (default) raise a layer's
                 fraction bits while quantization costs more than ``bits_tolerance``, then
                 lower them while it costs no more (no accuracy lost, no bit wasted);
                 "raise" only raise them; "off" keep the posterior rule.
    bits_tolerance: the error quantization may cost on the guard data, in percentage points.
    prune_search: with guard data: "fit" lowers the pruning thresholds of the Bayesian layers
                 (those without a ``thresholds`` entry) from the posterior's, a few groups or
                 weights at a time in order of log alpha, taking at each step the layer whose
                 cut removes the most stored weights while the guard error stays within
                 ``prune_tolerance`` of the error at the posterior's thresholds: the
                 per-layer thresholds the authors read off log-alpha histograms, fit on held-out
                 data; "fit-macs" the same, taking the cut that leaves the fewest
                 multiplications by nonzero weights (a convolution's weight counts once per
                 output pixel: the cuts go where the compute is, not where the file is);
                 "off" (default) keeps the posterior's thresholds.
    prune_tolerance: the error pruning past the posterior's thresholds may cost on the guard
                 data, in percentage points.
    float_bits:  with ``quantize``, every other float parameter of the compressed model
                 (biases, norm weights and biases, embeddings) goes on its own fixed-point
                 grid, its largest magnitude taking this many magnitude bits (relative error
                 <= 2^-float_bits of the tensor's scale), and the file stores it in
                 1 + float_bits bits per value (kwh.compress.floats); with guard data, more bits
                 (16, 20, then float32) while it costs more than ``bits_tolerance``. None
                 keeps them float32. Structured mode only: mode="weights" leaves the model's
                 other tensors as they are.
    """

    threshold: float | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    quantize: bool = True
    max_bits: int | None = None
    bits: dict[str, int] = field(default_factory=dict)
    plain_bits: int = MAX_TOTAL_BITS
    input_shape: tuple[int, ...] | None = None
    fold_batchnorm: bool = True
    bits_search: str = "fit"
    bits_tolerance: float = 0.05
    prune_search: str = "off"
    prune_tolerance: float = 0.1
    float_bits: int | None = FLOAT_BITS
    version: int = 1

    def __post_init__(self):
        if self.max_bits is not None:
            _check_bits("max_bits", self.max_bits)
        for name, n in self.bits.items():
            _check_bits(f"bits[{name!r}]", n)
        _check_bits("plain_bits", self.plain_bits)
        if self.input_shape is not None:
            shape = tuple(self.input_shape)
            if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                                for d in shape):
                raise ValueError(f"input_shape={self.input_shape!r} is invalid; give one "
                                 "example's shape as positive integers, e.g. (1, 28, 28)")
            self.input_shape = shape
        if self.float_bits is not None:
            check_float_bits(self.float_bits)
        if self.bits_search not in BITS_SEARCHES:
            raise ValueError(f"Unknown bits_search {self.bits_search!r}; choose one of: "
                             f"{', '.join(BITS_SEARCHES)}")
        if self.prune_search not in PRUNE_SEARCHES:
            raise ValueError(f"Unknown prune_search {self.prune_search!r}; choose one of: "
                             f"{', '.join(PRUNE_SEARCHES)}")
        for what in ("bits_tolerance", "prune_tolerance"):
            t = getattr(self, what)
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < 100:
                raise ValueError(f"{what}={t!r} is invalid; give percentage points in [0, 100)")
        for name, t in self.thresholds.items():
            if not isinstance(t, (int, float)) or isinstance(t, bool):
                raise ValueError(f"thresholds[{name!r}]={t!r} is not a number")

    def check_layer_names(self, bayesian: list[str], weighted: list[str],
                          kind: str = "Linear/Conv2d") -> None:
        """ValueError when ``thresholds`` names a layer that is not Bayesian, or ``bits`` one
        that is not among ``weighted`` (the layers this compression quantizes, of ``kind``)."""
        for name in self.thresholds:
            if name not in bayesian:
                raise ValueError(f"thresholds: no Bayesian layer named {name!r}; Bayesian "
                                 f"layers: {', '.join(bayesian) or 'none'}")
        for name in self.bits:
            if name not in weighted:
                label = "layers" if kind == "Linear/Conv2d" else f"{kind} layers"
                raise ValueError(f"bits: no {kind} layer named {name!r}; {label}: "
                                 f"{', '.join(weighted)}")

    def threshold_for(self, name: str) -> float | None:
        """The threshold override of one layer (None: the layer's own)."""
        return self.thresholds.get(name, self.threshold)


def check_float_bits(bits) -> None:
    """ValueError unless ``bits`` is a valid CompressConfig.float_bits (an int in 1..24)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 24:
        raise ValueError(f"float_bits={bits!r} is invalid; give magnitude bits in 1..24, or None "
                         "to keep biases and norms float32")


def _check_bits(what: str, n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not MIN_TOTAL_BITS <= n <= MAX_TOTAL_BITS:
        raise ValueError(f"{what}={n!r} is invalid; total bits per weight must be an integer in "
                         f"[{MIN_TOTAL_BITS}, {MAX_TOTAL_BITS}] (float32 holds 24 magnitude bits)")
