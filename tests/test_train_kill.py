"""SIGKILL a real `python -m kwh train` six times, resume each time: same bits as no kill."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from kwh.train import TrainConfig, read_checkpoint, read_checkpoint_meta, run_training

# LeNet-300-100, 1000 examples: 10 steps per epoch, 1 plain + 3 Bayesian epochs (40 steps),
# a checkpoint every 2 steps and at every epoch end.
ARGS = dict(model="lenet300", prior="group-horseshoe", pretrain_epochs=1, epochs=3,
            limit_train=1000, limit_test=200, threads=1, checkpoint_every=2)
# Kill once the checkpoint on disk has reached these global steps (plus a random delay of up
# to 30 ms, which lands the kill anywhere: mid-step, mid-write, mid-evaluation).
TARGETS = [4, 10, 17, 26, 33]


def _command(out_dir, data_root) -> list[str]:
    a = ARGS
    return [sys.executable, "-m", "kwh", "-q", "train", "--model", a["model"], "--prior", a["prior"],
            "--pretrain-epochs", str(a["pretrain_epochs"]), "--epochs", str(a["epochs"]),
            "--limit-train", str(a["limit_train"]), "--limit-test", str(a["limit_test"]),
            "--threads", str(a["threads"]), "--checkpoint-every", str(a["checkpoint_every"]),
            "--data-dir", str(data_root), "--out-dir", str(out_dir), "--no-progress",
            "--resume"]


def _step_on_disk(out_dir) -> int:
    try:
        return read_checkpoint_meta(out_dir / "checkpoint.safetensors")["position"]["global_step"]
    except FileNotFoundError:
        return -1


def _launch(out_dir, data_root) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(_command(out_dir, data_root), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, out_dir, target: int | None, rng: random.Random) -> int:
    """SIGKILL proc once the checkpoint reaches ``target`` (None: during start-up)."""
    if target is None:
        time.sleep(rng.uniform(0.2, 1.0))
    else:
        while _step_on_disk(out_dir) < target:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"run ended (rc {proc.returncode}) before step {target}: {err[-2000:]}")
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.03))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return _step_on_disk(out_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    ref_dir = tmp_path_factory.mktemp("ref")
    result = run_training(TrainConfig(**ARGS, data_dir=str(data_root), out_dir=str(ref_dir)),
                          progress=False)
    return ref_dir, result


def _kill_resume_compare(reference, out_dir, data_root, targets) -> None:
    """Kill at each target in turn (resuming in between), finish, compare with the reference."""
    ref_dir, ref = reference
    rng = random.Random(1234)
    on_disk = []
    for target in targets:
        on_disk.append(_kill_when(_launch(out_dir, data_root), out_dir, target, rng))
        if on_disk[-1] >= 0:
            read_checkpoint(out_dir / "checkpoint.safetensors")  # intact after the kill
    assert on_disk[1:] == sorted(on_disk[1:]) and on_disk[-1] >= targets[-1], on_disk
    proc = _launch(out_dir, data_root)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert out.startswith("test error ") and "alive per layer: 1: " in out

    a, _ = read_checkpoint(ref_dir / "checkpoint.safetensors")
    b, meta = read_checkpoint(out_dir / "checkpoint.safetensors")
    state = sorted(k for k in a if k.startswith(("model/", "optim/")))
    assert state == sorted(k for k in b if k.startswith(("model/", "optim/")))
    differ = [k for k in state if not torch.equal(a[k], b[k])]
    assert not differ, f"kills at steps {on_disk} changed {differ[:5]}"
    assert meta["position"] == {"epoch": 4, "step": 0, "global_step": 40}

    def untimed(rs):
        return [{k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds", "step_ms")} for r in rs]

    with open(out_dir / "log.jsonl", encoding="utf-8") as f:
        lines = [json.loads(x) for x in f]
    assert untimed(lines) == untimed(ref.history)
    assert not list(out_dir.glob(".checkpoint.safetensors.*"))  # no temp file left behind


def test_sigkill_at_start_and_mid_epoch_then_resume_gives_the_same_bits(reference, tmp_path,
                                                                        data_root):
    """Default run: two kills (during start-up, and in a Bayesian epoch)."""
    _kill_resume_compare(reference, tmp_path / "killed", data_root, [None, 17])


@pytest.mark.slow
def test_sigkill_at_six_points_then_resume_gives_the_same_bits(reference, tmp_path, data_root):
    """Six kills in one run: start-up, pretraining, the phase switch, three Bayesian points."""
    _kill_resume_compare(reference, tmp_path / "killed", data_root, [None, *TARGETS])
