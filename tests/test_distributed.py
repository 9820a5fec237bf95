"""Distributed training (gloo, 2 CPU processes) against one process on the same global batches.

Each rank adds KL/N (N the global training set size) to its local mean NLL and DDP averages
the gradients: (1/W) sum_r [grad NLL_r + grad KL/N] = grad(mean NLL over the global batch)
+ grad KL/N, the single-process gradient, with the KL counted once. The local
reparameterization noise differs between the two set-ups by construction (each rank draws for
its own examples), so both runs here replace torch.randn/randn_like by zeros: the forward pass
is then the posterior-mean pass of the same free energy and the comparison is exact up to the
order of float32 sums in the all-reduce.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

import kwh.train.engine as engine
from kwh.bayes import free_energy
from kwh.train import TrainConfig, read_checkpoint, run_training

# 400 examples, global batch 100 (50 per rank): 2 epochs x 4 steps; KL at full weight from
# step 0 so its gradient matters (KL/N is large for N = 400).
ARGS = dict(model="lenet300", prior="group-horseshoe", pretrain_epochs=0, epochs=2,
            limit_train=400, validation=0, limit_test=100, threads=1, kl_warmup_start=0.0,
            kl_warmup_end=0.0)
ATOL = 2e-5  # float32 summation order over 8 Adam steps of lr <= 1e-3; see the measured gap


def _no_noise(monkey=None):
    """Replace torch.randn / randn_like by zeros (in this process)."""
    def randn(*size, **kw):
        kw.pop("generator", None)
        return torch.zeros(*size, **kw)

    def randn_like(t, **kw):
        return torch.zeros_like(t, **kw)

    if monkey is None:
        torch.randn, torch.randn_like = randn, randn_like
    else:
        monkey.setattr(torch, "randn", randn)
        monkey.setattr(torch, "randn_like", randn_like)


def _worker(rank: int, world: int, port: int, config: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _no_noise()
    run_training(TrainConfig(**config), progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(out_dir) -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(out_dir / "checkpoint.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith("model/")}


def _max_gap(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_gloo_processes_match_one_process_and_count_the_kl_once(tmp_path, data_root,
                                                                    monkeypatch):
    two = dict(ARGS, data_dir=str(data_root), out_dir=str(tmp_path / "two"))
    mp.spawn(_worker, args=(2, _free_port(), two), nprocs=2, join=True)

    _no_noise(monkeypatch)
    one = run_training(TrainConfig(**dict(two, out_dir=str(tmp_path / "one"))), progress=False)
    # A wrong engine that counted the KL once per rank (W = 2 times) as a sensitivity check.
    monkeypatch.setattr(engine, "free_energy",
                        lambda m, nll, n, beta: free_energy(m, nll, n, 2 * beta))
    run_training(TrainConfig(**dict(two, out_dir=str(tmp_path / "kl2"))), progress=False)

    p1, p2, p_wrong = (_params(tmp_path / d) for d in ("one", "two", "kl2"))
    gap, wrong_gap = _max_gap(p1, p2), _max_gap(p1, p_wrong)
    print(f"max |1 proc - 2 procs| = {gap:.3g}; with the KL doubled: {wrong_gap:.3g}")
    assert gap <= ATOL, f"1 vs 2 processes differ by {gap:.3g}"
    assert wrong_gap > 20 * ATOL, f"the check cannot tell a doubled KL ({wrong_gap:.3g})"

    # Rank 0 alone logged and checkpointed; its epoch records agree with the single process.
    import json
    with open(tmp_path / "two" / "log.jsonl", encoding="utf-8") as f:
        lines = [json.loads(x) for x in f]
    assert [r["epoch"] for r in lines] == [1, 2] == [r["epoch"] for r in one.history]
    for a, b in zip(lines, one.history):
        assert a["global_step"] == b["global_step"]
        assert a["train_nll"] == pytest.approx(b["train_nll"], rel=1e-5)
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "checkpoint.safetensors", "config.json", "log.jsonl"]


def test_batch_size_must_split_evenly(tmp_path, data_root):
    from kwh.errors import KwhError
    from kwh.train.batches import BatchOrder
    from torch.utils.data import TensorDataset

    ds = TensorDataset(torch.zeros(10, 1), torch.zeros(10, dtype=torch.long))
    with pytest.raises(KwhError, match="batch_size 5 is not divisible by the 2 processes"):
        BatchOrder(ds, 5, seed=0, rank=0, world_size=2)
    # Local batches of the ranks together are exactly the single-process global batch.
    ds = TensorDataset(torch.arange(12.0)[:, None], torch.zeros(12, dtype=torch.long))
    single = BatchOrder(ds, 4, seed=3)
    ranks = [BatchOrder(ds, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for epoch in range(2):
        for step in range(3):
            want = sorted(single.batch(epoch, step)[0].ravel().tolist())
            got = sorted(sum((r.batch(epoch, step)[0].ravel().tolist() for r in ranks), []))
            assert got == want


@pytest.mark.slow
def test_torchrun_runs_the_cli_with_two_processes(tmp_path, data_root):
    out = tmp_path / "tr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(_free_port()), "-m", "kwh", "-q", "train", "--model", "lenet300",
           "--epochs", "1", "--limit-train", "400", "--limit-test", "100", "--threads", "1",
           "--data-dir", str(data_root), "--out-dir", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test error") == 1  # rank 0 only
    assert (out / "checkpoint.safetensors").is_file()
