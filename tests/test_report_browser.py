"""The report rendered by headless Chromium: every image decodes, the page is not blank."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import kwh
from kwh.app import LoadedModel
from kwh.bayes import bayes_layers
from kwh.models import lenet5
from kwh.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium); "
                             "the headless rendering check needs it")


def chromium(profile, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def compressed_model() -> LoadedModel:
    """A compressed LeNet-5 from kwh.compress (three conv1 filters pruned)."""
    m = lenet5()
    kwh.bayesify_(m, "group-nj")
    _, conv1 = next(bayes_layers(m))
    with torch.no_grad():
        conv1.prior.z_log_var[:3] = 5.0
    small = kwh.compress(m, input_shape=(1, 28, 28))
    return LoadedModel(small, small.kwh_summary, "lenet5 (compressed in memory)")


def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image
    results = tmp_path / "results_lenet5_mnist.csv"
    results.write_text("method,error,fast_prediction\na,0.01,100\na,0.02,300\n")
    page = tmp_path / "report.html"
    loaded = compressed_model()
    write_report(page, loaded, compare_csv=results if loaded.summary else None, accuracy=0.99)
    html = page.read_text()
    n_img = len(re.findall(r"<img ", html))
    assert n_img >= 4

    dom = chromium(tmp_path / "p1", "--virtual-time-budget=10000", "--dump-dom",
                   page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:500]
    assert f'data-images="{n_img}"' in body.group(0)
    assert 'data-images-ok="yes"' in body.group(0)  # every <img> has naturalWidth > 0

    shot = tmp_path / "shot.png"
    r = chromium(tmp_path / "p2", f"--screenshot={shot}", "--window-size=1200,3000",
                 "--hide-scrollbars", page.as_uri())
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)  # (H, W) gray 0-255
    assert px.shape == (3000, 1200)
    assert px.std() > 20                   # a blank page has std 0
    assert (px < 200).mean() > 0.03        # > 3% of pixels are ink (text, plots), not white
