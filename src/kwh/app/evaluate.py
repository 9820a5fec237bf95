"""A model on a data set: test error, accuracy, video sequences, and the uncertainty metrics.

The core packages take tensors and loaders; this module reads the data sets (kwh.data) and
the model files (kwh.app.load) for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from torch import Tensor, nn
from torch.utils.data import TensorDataset

from kwh import data as datasets
from kwh.app.load import load_model
from kwh.bayes.uncertainty import evaluate_uncertainty
from kwh.compress.metrics import evaluate

__all__ = ["load_test", "error_on", "normalization_note", "accuracy_on", "sequences", "load_ood",
           "evaluate_model_file", "KWH_FILE_NOTE"]

KWH_FILE_NOTE = ("a .kwh file holds the compressed deterministic model (posterior mean, pruned "
                 "and quantized): one forward pass, mutual information 0; for posterior samples "
                 "evaluate the Bayesian checkpoint from `kwh train`")


def load_test(data: str, root=None, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """The test split of ``data`` (first ``limit`` examples): images (N, C, H, W), labels (N,)."""
    return datasets.get_dataset(data, "test", root, limit=limit).tensors


def error_on(model: nn.Module, data: str, root=None, limit: int | None = None,
               batch_size: int = 1000) -> dict:
    """Classification error on the test split of ``data``: {"error", "correct", "n"}."""
    test = datasets.get_dataset(data, "test", root, limit=limit)
    return evaluate(model, datasets.batch_loader(test, batch_size))


def accuracy_on(model: nn.Module, data: str, root=None, limit: int | None = None,
             batch_size: int = 1000) -> tuple[float, int]:
    """Top-1 accuracy on the test split of ``data`` (first ``limit`` examples): (acc, n)."""
    r = error_on(model, data, root, limit, batch_size)
    return r["correct"] / r["n"], r["n"]


def sequences(data: str, split: str = "test", kind: str = "moving", *, n: int = 20,
              frames: int = 10, seed: int = 0, root=None) -> tuple[Tensor, Tensor]:
    """Video of ``data`` digits, time-major: frames (T, S, C, H, W) and labels (S,) for S
    moving-digit sequences; one temporal stream is frames (T, 1, C, H, W), labels (T, 1)."""
    if n < 1 or frames < 1:
        raise ValueError(f"--sequences and --frames must be >= 1, got {n} and {frames}")
    x, y = datasets.sequence_dataset(data, split, kind, root=root, n_sequences=n,
                                     n_frames=frames, seed=seed).tensors
    if kind == "temporal":  # one stream: (T, C, H, W), labels (T,)
        return x[:, None], y[:, None]
    return x.transpose(0, 1).contiguous(), y  # (S, T, ...) -> (T, S, ...)


def load_ood(name: str, like: str, root=None, limit: int | None = None) -> TensorDataset:
    """Test split of data set ``name`` normalized with the pixel statistics of ``like`` (the
    training data), as the model's own input pipeline sees it; labels kept but not used."""
    idx_sets = ("mnist", "fashion-mnist")
    if name not in idx_sets or like not in idx_sets:
        raise ValueError(f"OOD pairs are MNIST-format data sets ({', '.join(idx_sets)}); "
                         f"got OOD {name!r} for a model trained on {like!r}")
    x, y = datasets.get_dataset(name, "test", root, normalize=False, limit=limit).tensors
    mean, std = datasets.normalization(like)
    return TensorDataset((x - mean) / std, y)  # (N, 1, 28, 28), (N,)


def _counted(loader: Iterable, progress: Callable[[int, int], None], start: int,
             total: int) -> Iterator:
    """The batches of ``loader``; once each is used, ``progress(examples done, total)``."""
    done = start
    for batch in loader:
        yield batch
        done += len(batch[0])
        progress(done, total)


def normalization_note(model: nn.Module, data: str) -> str | None:
    """A note when ``model`` records an input normalization (a .kwh file written by `kwh
    compress`) other than the one data set ``data`` applies; None when they agree or none
    is recorded."""
    stored = getattr(model, "kwh_input_normalization", None)
    if stored is None:
        return None
    theirs = datasets.input_normalization(data)
    if _same_normalization(stored, theirs):
        return None
    return (f"the file records input normalization {stored}, {data}'s is {theirs}: the model "
            "was trained on other data")


def _same_normalization(a: dict, b: dict, tol: float = 1e-6) -> bool:
    return all(len(a[k]) == len(b[k]) and all(abs(x - y) <= tol for x, y in zip(a[k], b[k]))
               for k in ("mean", "std"))


def evaluate_model_file(path, data: str = "mnist", ood: str | None = None, samples: int = 20, *,
                        data_dir=None, limit_test: int | None = None, batch_size: int = 500,
                        method: str = "auto",
                        progress: Callable[[int, int], None] | None = None) -> dict:
    """kwh.bayes.evaluate_uncertainty of the model in ``path`` (a .kwh file, deterministic, or
    a checkpoint / run folder of `kwh train`, sampled) on the test split of ``data``: what
    `kwh evaluate MODEL --data D --uncertainty [--ood O]` prints.

    ``progress(done, total)``, when given, is called after each batch with the examples done,
    test set then OOD set (total: both together).
    """
    loaded = load_model(path)
    test_set = datasets.get_dataset(data, "test", data_dir, limit=limit_test)
    ood_set = None if ood is None else load_ood(ood, data, data_dir, limit=limit_test)
    test = datasets.batch_loader(test_set, batch_size)
    ood_loader = None if ood_set is None else datasets.batch_loader(ood_set, batch_size)
    if progress is not None:
        total = len(test_set) + (0 if ood_set is None else len(ood_set))
        test = _counted(test, progress, 0, total)
        if ood_loader is not None:
            ood_loader = _counted(ood_loader, progress, len(test_set), total)
    out = evaluate_uncertainty(loaded.model, test, ood_loader, samples, method=method)
    out.update(model_file=str(path), model_kind=loaded.kind, data=data, ood_data=ood)
    if loaded.kind == "kwh" and out["method"] == "deterministic":
        out["note"] = KWH_FILE_NOTE
    mismatch = normalization_note(loaded.model, data)
    if mismatch:
        out["note"] = (out["note"] + "; " if out["note"] else "") + mismatch
    if loaded.data is not None and loaded.data != data:
        out["note"] = (out["note"] + "; " if out["note"] else "") + (
            f"the model was trained on {loaded.data}, evaluated on {data}")
    return out
