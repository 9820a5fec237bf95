"""A compressed ResNet end to end: kwh.compress on the traced graph, the .kwh graph layout,
kwh.load without the class, the same outputs, and the summary's payload from that file."""

from __future__ import annotations

import pytest
import torch

import kwh
from kwh.format import file_report
from kwh.models import resnet20
from tests.any_models import random_posterior_


def _bayesian_resnet(prior: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = resnet20(width=4)
    kwh.bayesify_(model, prior)
    random_posterior_(model)
    return model.eval()


def test_compressed_resnet_saves_as_a_graph_and_loads_without_its_class(tmp_path):
    model = _bayesian_resnet("group-horseshoe")
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    small = kwh.compress(model, example_inputs=x)
    s = small.kwh_summary
    assert s["architecture"] != s["architecture_original"]  # filters were removed
    assert s["payload_bytes"] and s["rates"]["max_compression"] > 1
    path = tmp_path / "resnet.kwh"
    nbytes = kwh.save(small, path)
    assert path.stat().st_size == nbytes
    report = file_report(path)
    assert report["layout"] == "graph"
    loaded = kwh.load(path)
    assert type(loaded).__name__ == "GraphNet"
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))
    assert loaded.kwh_summary["architecture"] == s["architecture"]
    assert tuple(loaded.kwh_input_shape) == (1, 28, 28)


def test_unquantized_compressed_resnet_matches_the_masked_bayesian_model():
    model = _bayesian_resnet("group-nj")
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    small = kwh.compress(model, example_inputs=x, quantize=False)
    with torch.no_grad():
        want, got = model(x), small(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_deployment_copy_leaves_the_summary_out_and_runs_the_same(tmp_path):
    model = _bayesian_resnet("log-uniform")
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    small = kwh.compress(model, example_inputs=x)
    full, bare = tmp_path / "full.kwh", tmp_path / "bare.kwh"
    n_full = kwh.save(small, full)
    n_bare = kwh.save(small, bare, summary=False)
    assert n_bare == bare.stat().st_size < n_full
    a, b = kwh.load(full), kwh.load(bare)
    assert getattr(b, "kwh_summary", None) is None and a.kwh_summary is not None
    assert b.kwh_input_shape == a.kwh_input_shape == (1, 28, 28)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    # the same sections: the payload is the same bytes
    assert file_report(full)["payload_bytes"] == file_report(bare)["payload_bytes"]
    with pytest.raises(ValueError, match="summary=.* is invalid"):
        kwh.save(small, tmp_path / "bad.kwh", summary="no")
    assert not (tmp_path / "bad.kwh").exists()


def test_the_dense_original_of_a_loaded_resnet_file_is_rebuilt_from_its_summary(tmp_path):
    """kwh energy on a compressed ResNet file needs no --dense: the loaded GraphNet rebuilt at
    the summary's original shapes has the dense model's layers (BatchNorm folded) and
    multiplications; a summary whose counts disagree is refused, never priced."""
    import copy

    from kwh.energy.sources import dense_reference
    from kwh.errors import ModelError

    model = _bayesian_resnet("group-horseshoe")  # width 4: no reference model has its shapes
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    small = kwh.compress(model, example_inputs=x)
    path = tmp_path / "resnet.kwh"
    kwh.save(small, path)
    loaded = kwh.load(path)
    s = loaded.kwh_summary
    assert s["architecture"] != s["architecture_original"]
    dense, label = dense_reference(s, None, loaded)
    assert "summary's shapes" in label
    convs = lambda m: [tuple(c.weight.shape) for c in m.modules()  # noqa: E731
                       if isinstance(c, (torch.nn.Conv2d, torch.nn.Linear))]
    assert convs(dense) == convs(resnet20(width=4))
    macs = {}
    hooks = [c.register_forward_hook(lambda c, a, o: macs.__setitem__(c, o[0].numel()
                                                                       * c.weight[0].numel()))
             for c in dense.modules() if isinstance(c, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        assert dense(x).shape == (8, 10)
    for h in hooks:
        h.remove()
    assert sum(macs.values()) == s["macs_original"]
    bad = copy.deepcopy(s)
    bad["layers"][3]["macs_original"] += 1
    with pytest.raises(ModelError, match="multiplications, its summary"):
        dense_reference(bad, None, loaded)
    bad = copy.deepcopy(s)
    bad["layers"][3]["shape_original"][1] += 1  # its input no longer fits the layer before
    with pytest.raises(ModelError, match="does not run.*--dense NAME"):
        dense_reference(bad, None, loaded)
