"""Descriptions of the IDX data sets: file names, SHA-256 digests, mirrors, pixel statistics."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DataError

__all__ = ["IdxFile", "IdxDataset", "IDX_DATASETS", "idx_dataset", "SPLITS"]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class IdxFile:
    """One IDX file: its name without `.gz`, SHA-256 of the original `.gz` and of its content."""

    name: str
    sha256_gz: str
    sha256_raw: str


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-format data set: images and labels per split, where to fetch them, statistics."""

    name: str
    folder: str
    mirrors: tuple[str, ...]
    files: tuple[IdxFile, IdxFile, IdxFile, IdxFile]  # train images, train labels, test ...
    mean: float  # mean pixel of the train images, scaled to [0, 1]
    std: float  # standard deviation of the same pixels

    def split_files(self, split: str) -> tuple[IdxFile, IdxFile]:
        """The (images, labels) files of a split."""
        if split not in SPLITS:
            raise DataError(f"Unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        first = 0 if split == "train" else 2
        return self.files[first], self.files[first + 1]


def _files(digests: dict[str, tuple[str, str]]) -> tuple[IdxFile, IdxFile, IdxFile, IdxFile]:
    order = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return tuple(IdxFile(n, *digests[n]) for n in order)  # type: ignore[return-value]


# Digests from /work/shared/data/README.md (checked byte for byte against the official files).
MNIST = IdxDataset(
    name="mnist",
    folder="mnist",
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    files=_files({
        "train-images-idx3-ubyte": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        "train-labels-idx1-ubyte": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        "t10k-images-idx3-ubyte": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        "t10k-labels-idx1-ubyte": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    }),
    mean=0.1307, std=0.3081,
)

FASHION_MNIST = IdxDataset(
    name="fashion-mnist",
    folder="fashion-mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    files=_files({
        "train-images-idx3-ubyte": (
            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train-labels-idx1-ubyte": (
            "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "t10k-images-idx3-ubyte": (
            "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "t10k-labels-idx1-ubyte": (
            "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    }),
    mean=0.2860, std=0.3530,  # measured on the 60,000 train images (test_data.py checks it)
)

IDX_DATASETS = {d.name: d for d in (MNIST, FASHION_MNIST)}


def idx_dataset(name: str) -> IdxDataset:
    """Look up an IDX data set by name."""
    try:
        return IDX_DATASETS[name]
    except KeyError:
        raise DataError(f"Unknown IDX data set {name!r}; choose one of: "
                        f"{', '.join(IDX_DATASETS)}") from None
