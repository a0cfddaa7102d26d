"""examples/transfer_learning.py end to end on a tiny archive: the frozen part of the base
keeps every weight and BN statistic through both phases; the top block learns only when
fine-tuned."""

import importlib.util
from pathlib import Path

import numpy as np

from fastconv import data as fcdata

from test_data import cache_in_tmp, make_image_tree  # noqa: F401 (cache_in_tmp: a fixture)


def load_example():
    path = Path(__file__).parents[1] / "examples" / "transfer_learning.py"
    spec = importlib.util.spec_from_file_location("transfer_learning", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_trains_the_head_then_the_top_block_only(tmp_path):
    archive = tmp_path / "tiny.tar.gz"
    make_image_tree(archive, per_class=3, classes=fcdata.CIFAR10_CLASSES[:3])
    example = load_example()
    argv = [
        "--data",
        str(archive),
        "--model",
        "resnet18",
        "--subset",
        "9",
        "--test-subset",
        "6",
        "--epochs",
        "1",
        "--fine-tune-epochs",
        "1",
        "--batch-size",
        "4",
        "--quiet",
    ]
    lines = []
    results, base, model = example.main(argv, print_fn=lines.append)
    assert list(results) == ["frozen base", "fine-tuned top block"]
    assert any(line.startswith("note: no --weights given") for line in lines)
    assert any(line.startswith("fine-tuned top block: test accuracy") for line in lines)
    # the same seed: the initial weights and BN statistics main started from
    _, _, initial_base, initial_model, _ = example.prepare(example.parse(argv), print_fn=len)
    before, after = initial_base.get_weight_dict(), base.get_weight_dict()
    top = example.top_block(base)
    assert top == "layer4.1."
    learned = {k for k in before if not np.array_equal(before[k], after[k])}
    assert learned  # the fine-tuned block's kernels and BN gamma / beta
    assert all(k.startswith(top) and "moving" not in k for k in learned), sorted(learned)[:5]
    assert not np.array_equal(
        initial_model.get_weight_dict()["head/kernel"], model.get_weight_dict()["head/kernel"]
    )
