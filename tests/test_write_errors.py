"""Writing files: errors name the path the user gave (never the temp file) and the fix."""

from __future__ import annotations

import errno
import io
import os

import pytest
import torch

import kwh
from cli_run import run_main
from kwh.data import locate
from kwh.format.io import atomic_write_bytes, check_destination
from kwh.models import lenet300



def test_missing_folder_names_the_path_and_the_fix(tmp_path):
    path = tmp_path / "no" / "such" / "m.kwh"
    folder = tmp_path / "no" / "such"
    for attempt in (lambda: atomic_write_bytes(path, b"x"), lambda: check_destination(path)):
        with pytest.raises(FileNotFoundError) as e:
            attempt()
        assert str(e.value) == (f"cannot write {path}: the folder {folder} does not exist; "
                                f"create it first (mkdir -p {folder})")
        assert e.value.errno == errno.ENOENT
    assert not (tmp_path / "no").exists()


def test_a_folder_or_a_file_in_the_way_is_named(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"cannot write {tmp_path}: {tmp_path} is a "
                                                "folder; give a file name"):
        atomic_write_bytes(tmp_path, b"x")
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError) as e:
        atomic_write_bytes(tmp_path / "f" / "m.kwh", b"x")
    assert str(e.value).startswith(f"cannot write {tmp_path / 'f' / 'm.kwh'}: {tmp_path / 'f'} "
                                   "is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no temp file left


def test_a_failed_rename_names_the_destination_not_the_temp_file(tmp_path, monkeypatch):
    def denied(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", src, dst)

    monkeypatch.setattr(os, "replace", denied)
    path = tmp_path / "m.kwh"
    with pytest.raises(PermissionError) as e:
        atomic_write_bytes(path, b"x")
    assert str(e.value) == (f"cannot write {path}: no permission to write in {tmp_path}; "
                            "choose another folder or change its rights")
    assert ".tmp" not in str(e.value) and list(tmp_path.iterdir()) == []
    with pytest.raises(PermissionError, match=f"cannot write {tmp_path / 'c' / 'x.gz'}: no "
                                              "permission") as e:
        locate.atomic_write(tmp_path / "c" / "x.gz", lambda out: out.write(b"x"))
    assert ".part" not in str(e.value) and list((tmp_path / "c").iterdir()) == []


def test_download_errors_pass_through_the_data_writer_unchanged(tmp_path):
    def fill(out: io.BufferedWriter) -> None:
        raise ConnectionResetError(errno.ECONNRESET, "reset by peer")

    with pytest.raises(ConnectionResetError, match="reset by peer"):
        locate.atomic_write(tmp_path / "x.gz", fill)


def test_export_to_a_missing_folder_is_one_line_naming_it(tmp_path, capsys):
    kwh.save(lenet300().eval(), tmp_path / "m.kwh", input_shape=(1, 28, 28))
    out = tmp_path / "nonexistent" / "dir" / "x.onnx"
    code, text, err = run_main(["export", str(tmp_path / "m.kwh"), "--onnx", str(out)], capsys)
    folder = tmp_path / "nonexistent" / "dir"
    assert code == 2 and text == ""
    assert err == (f"kwh: error: cannot write {out}: the folder {folder} does not exist; "
                   f"create it first (mkdir -p {folder})\n")


def test_compress_to_a_missing_folder_fails_before_training(tmp_path, data_root, capsys):
    out = tmp_path / "nonexistent" / "d" / "m.kwh"
    argv = ["compress", "--model", "lenet300", "--epochs", "1", "--limit-train", "200",
            "--limit-test", "100", "--data-dir", str(data_root), "--out-dir",
            str(tmp_path / "run"), "--threads", "1", "--no-progress", "--out", str(out)]
    torch.manual_seed(0)
    code, text, err = run_main(argv, capsys)
    assert code == 2 and text == ""
    assert err.startswith(f"kwh: error: cannot write {out}: the folder {out.parent} does not "
                          "exist") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # no training was started
