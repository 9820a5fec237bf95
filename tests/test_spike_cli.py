"""`kwh spike`: a .kwh file or a reference model with a checkpoint, on real MNIST sequences."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from kwh.cli.main import main
from kwh.models import lenet300


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = lenet300()
    path = tmp_path / "lenet300.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def _table(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("dense", "rounding", "sigma-delta", "send-on-threshold"):
            rows[parts[0]] = parts[1:]
    return rows


def test_reference_model_with_checkpoint(data_root, checkpoint, capsys):
    _, path = checkpoint
    rc = main(["spike", "lenet300", "--checkpoint", str(path), "--data-dir", str(data_root),
               "--sequences", "4", "--frames", "3", "--scales", "3", "--threshold", "0"])
    assert rc == 0
    rows = _table(capsys.readouterr().out)
    assert set(rows) == {"dense", "rounding", "sigma-delta", "send-on-threshold"}
    dense_macs = 784 * 300 + 300 * 100 + 100 * 10
    assert rows["dense"][2:4] == [f"{dense_macs:,}"] * 2      # first frame, steady state
    assert rows["sigma-delta"][:3] == rows["rounding"][:3]     # same outputs, same spikes
    # threshold 0: the dense network's predictions
    assert rows["send-on-threshold"][:2] == [rows["dense"][0], "100.00"]


def test_kwh_file(data_root, tmp_path, checkpoint, capsys):
    import kwh
    model, _ = checkpoint
    path = tmp_path / "m.kwh"
    kwh.save(model.eval(), path, input_shape=(1, 28, 28))
    rc = main(["spike", str(path), "--data-dir", str(data_root), "--sequences", "2",
               "--frames", "2", "--scales", "2,2,2"])
    assert rc == 0
    assert "sigma-delta" in _table(capsys.readouterr().out)


@pytest.mark.parametrize("argv,message", [
    (["spike", "lenet5"], "needs --checkpoint"),
    (["spike", "no-such-model.kwh"], "neither a file nor a reference model"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_wrong_number_of_scales(data_root, checkpoint, capsys):
    _, path = checkpoint
    rc = main(["spike", "lenet300", "--checkpoint", str(path), "--data-dir", str(data_root),
               "--sequences", "2", "--frames", "2", "--scales", "1,2"])
    assert rc == 2
    assert "give one number or a list of 3" in capsys.readouterr().err


def test_bad_scales_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        main(["spike", "lenet5", "--scales", "0,-1"])
    assert info.value.code == 2
    assert "invalid scales" in capsys.readouterr().err
