"""The `python -m fastconv.train` command on a tiny CIFAR-style archive."""
import importlib.util
import json

import numpy as np
import pytest
from test_data import make_image_tree

from fastconv import train
from fastconv.nn import fit


@pytest.fixture()
def tiny_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE", str(tmp_path / "cache"))
    make_image_tree(tmp_path / "tiny.tar.gz", per_class=8)
    return str(tmp_path / "tiny.tar.gz")


def test_cli_trains_writes_outputs_and_resumes(tiny_archive, tmp_path, capsys, monkeypatch):
    def args(out, *extra):
        return ["--data", tiny_archive, "--batch-size", "8", "--epochs", "3", "--output",
                str(out), "--quiet", "--tta", "flip", *extra]

    straight = train.main(args(tmp_path / "a"))
    assert "epoch      loss  train acc  test acc" in capsys.readouterr().out
    outputs = ["checkpoint.npz", "model.npz", "metrics.csv", "metrics.json"]
    for name in outputs + (["curves.png"] if importlib.util.find_spec("matplotlib") else []):
        assert (tmp_path / "a" / name).exists(), name
    assert json.loads((tmp_path / "a" / "metrics.json").read_text()) == straight

    # interrupt the same run right after epoch 2's checkpoint, then resume it
    save = fit.save_checkpoint

    def save_then_interrupt(path, model, epoch, history):
        save(path, model, epoch, history)
        if epoch == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(fit, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.main(args(tmp_path / "b"))
    monkeypatch.setattr(fit, "save_checkpoint", save)
    resumed = train.main(args(tmp_path / "b", "--resume"))
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
    assert strip(resumed) == strip(straight)
    a, b = np.load(tmp_path / "a" / "model.npz"), np.load(tmp_path / "b" / "model.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_cli_reports_missing_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar10-jpeg"):
        train.main(["--data", str(tmp_path / "missing.tar.gz"), "--output", str(tmp_path)])


def test_cli_stops_on_nan(tiny_archive, tmp_path):
    with pytest.raises(SystemExit, match="stopped: loss is nan|stopped: loss is inf"):
        train.main(["--data", tiny_archive, "--batch-size", "8", "--epochs", "2", "--lr", "1e30",
                    "--output", str(tmp_path / "nan"), "--quiet"])


@pytest.mark.parametrize("flag, value", [("--eval-every", "0"), ("--eval-every", "x"),
                                         ("--widths", "64,128"), ("--flip", "sometimes")])
def test_cli_rejects_bad_flags(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        train.parse_args([flag, value])
    assert stop.value.code == 2 and flag in capsys.readouterr().err
