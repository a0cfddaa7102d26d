"""The `fastconv` command: train (on a tiny CIFAR-style archive), check, info, and how it
answers bad data, a missing checkpoint and Ctrl-C."""

import gzip
import importlib.util
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from fastconv import _npz, cli
from fastconv.nn import fit

from test_data import make_image_tree


@pytest.fixture()
def tiny_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE", str(tmp_path / "cache"))
    make_image_tree(tmp_path / "tiny.tar.gz", per_class=8)
    return str(tmp_path / "tiny.tar.gz")


def train_args(archive, out, *extra):
    return [
        "train",
        "--data",
        archive,
        "--batch-size",
        "8",
        "--epochs",
        "3",
        "--output",
        str(out),
        "--quiet",
        "--tta",
        "flip",
        *extra,
    ]


def history(out):
    return json.loads((out / "metrics.json").read_text())


def test_train_writes_outputs_and_resumes(tiny_archive, tmp_path, capsys, monkeypatch):
    assert cli.main(train_args(tiny_archive, tmp_path / "a")) == 0
    assert "epoch      loss  train acc  test acc" in capsys.readouterr().out
    outputs = ["checkpoint.npz", "model.npz", "metrics.csv", "metrics.json"]
    for name in outputs + (["curves.png"] if importlib.util.find_spec("matplotlib") else []):
        assert (tmp_path / "a" / name).exists(), name
    straight = history(tmp_path / "a")
    assert len(straight) == 3 and straight[-1]["test_acc"] is not None

    # Ctrl-C right after epoch 2's checkpoint: one line saying how to continue, status 130
    save = fit.save_checkpoint

    def save_then_interrupt(path, model, epoch, history):
        save(path, model, epoch, history)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit, "save_checkpoint", save_then_interrupt)
    assert cli.main(train_args(tiny_archive, tmp_path / "b")) == cli.EXIT_INTERRUPTED
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert str(tmp_path / "b" / "checkpoint.npz") in message and message.endswith("--resume")
    monkeypatch.setattr(fit, "save_checkpoint", save)

    # a write killed mid-way leaves its partial file: the next start removes it
    partial = _npz.stale_partial(tmp_path / "b" / "checkpoint.npz")
    partial.write_bytes(b"half a checkpoint")
    assert cli.main(train_args(tiny_archive, tmp_path / "b", "--resume")) == 0
    assert not partial.exists()
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
    assert strip(history(tmp_path / "b")) == strip(straight)
    a, b = np.load(tmp_path / "a" / "model.npz"), np.load(tmp_path / "b" / "model.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _bad_data(tmp_path):
    """(name, path) of data a user might pass by mistake."""
    good = tmp_path / "good.tar.gz"
    make_image_tree(good, per_class=2)
    raw = good.read_bytes()
    (tmp_path / "truncated.tar.gz").write_bytes(raw[: len(raw) // 2])
    corrupt = bytearray(raw)
    corrupt[len(raw) // 3 : len(raw) // 3 + 64] = bytes(64)
    (tmp_path / "corrupt.tar.gz").write_bytes(bytes(corrupt))
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "empty.tar.gz").write_bytes(b"")
    with tarfile.open(tmp_path / "nosplits.tar.gz", "w:gz") as tar:
        tar.add(good, arcname="something/else.tar.gz")
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "plain.gz").write_bytes(gzip.compress(b"not a tar"))
    names = [
        "truncated.tar.gz",
        "corrupt.tar.gz",
        "random.bin",
        "empty.tar.gz",
        "nosplits.tar.gz",
        "empty_folder",
        "plain.gz",
        "missing.tar.gz",
    ]
    return [(n, tmp_path / n) for n in names]


def test_bad_data_gives_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTCONV_CACHE", str(tmp_path / "cache"))
    for name, path in _bad_data(tmp_path):
        code = cli.main(
            ["train", "--data", str(path), "--output", str(tmp_path / "out"), "--quiet"]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2, (name, err)
        assert err.startswith("fastconv: error: ") and "Traceback" not in err, (name, err)
        assert len(err.splitlines()) <= 2 and len(err) < 400, (name, err)
        assert str(path) in err, (name, err)


def test_bench_train_with_bad_data_gives_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    monkeypatch.setenv("FASTCONV_CACHE", str(tmp_path / "cache"))
    for name, path in _bad_data(tmp_path):
        assert cli.main(["bench", "--train", "--data", str(path)]) == cli.EXIT_USAGE, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("fastconv: error: ") and str(path) in err, (name, err)


def test_resume_without_a_checkpoint(tiny_archive, tmp_path, capsys):
    assert cli.main(train_args(tiny_archive, tmp_path / "none", "--resume")) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and len(err.strip().splitlines()) == 1


def test_a_foreign_checkpoint_is_refused_clearly(tiny_archive, tmp_path, capsys):
    out = tmp_path / "foreign"
    out.mkdir()
    np.savez(out / "checkpoint.npz", something=np.zeros(3))
    assert cli.main(train_args(tiny_archive, out, "--resume")) == 2
    assert "not a fastconv checkpoint" in capsys.readouterr().err


def test_nan_stops_training(tiny_archive, tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--data",
            tiny_archive,
            "--batch-size",
            "8",
            "--epochs",
            "2",
            "--lr",
            "1e30",
            "--output",
            str(tmp_path / "nan"),
            "--quiet",
        ]
    )
    assert code == 1 and "stopped: loss is" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--eval-every", "0"),
        ("--eval-every", "x"),
        ("--widths", "64,128"),
        ("--flip", "sometimes"),
        ("--epochs", "-1"),
    ],
)
def test_bad_flags(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", flag, value])
    assert stop.value.code == 2 and flag in capsys.readouterr().err


def test_every_recipe_field_has_a_flag(capsys):
    from dataclasses import fields

    from fastconv.recipe import Recipe

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for f in fields(Recipe):
        assert "--" + f.name.replace("_", "-") in text, f.name


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert stop.value.code == 0
    for command in ("train", "viz", "bench", "check", "info"):
        assert command in text


def test_info_names_the_instruction_set_and_cuda(capsys):
    import fastconv

    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert fastconv.isa() in text and "CUDA:" in text and fastconv.__version__ in text


def test_check_passes_and_fails_on_a_wrong_kernel(capsys, monkeypatch):
    assert cli.main(["check", "--cases", "2"]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "batch_norm" in out and "MISMATCH" not in out
    from fastconv import functional

    real = functional.max_pool2d
    monkeypatch.setattr(functional, "max_pool2d", lambda *a, **k: real(*a, **k) + 1)
    assert cli.main(["check", "--cases", "2"]) == 1
    assert "max_pool2d" in capsys.readouterr().out


def test_a_closed_pipe_is_not_an_error(tmp_path):
    """`fastconv info | head -1`: the reader closes the pipe before fastconv has written
    everything; fastconv stops quietly with status 0 rather than printing a traceback. (Run
    outside the checkout, whose source folder would shadow the installed package.)"""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastconv", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
