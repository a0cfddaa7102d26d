"""The training loop behind Sequential.fit, plus evaluate / predict with test-time augmentation.

Repeatability: every random choice of epoch e (shuffle order, augmentation, dropout masks)
comes from generators seeded with (seed, e), and a checkpoint written after each epoch holds
the weights, BN statistics, optimiser state and history, so a run resumed from epoch e's
checkpoint computes exactly what the uninterrupted run computes.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from .. import _args, _npz
from .. import data as fcdata
from .._backend import array_module
from ..memory import array_cache
from .layers import Dropout


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


HEADER = f"{'epoch':>5}  {'loss':>8}  {'train acc':>9}  {'test acc':>8}  {'lr':>9}  {'seconds':>8}"


def _row(h):
    test = "-" if h.get("test_acc") is None else f"{h['test_acc']:.4f}"
    return (
        f"{h['epoch']:>5}  {h['loss']:>8.4f}  {h['train_acc']:>9.4f}  {test:>8}  "
        f"{h['lr']:>9.2e}  {h['seconds']:>8.1f}"
    )


def _layout_axis_w(model):
    layout = next(
        (
            getattr(layer, "layout", None)
            for layer in model.running_layers()
            if getattr(layer, "layout", None)
        ),
        "NHWC",
    )
    return 2 if layout == "NHWC" else 3


def _views(model, xb, tta):
    """The test-time views of a batch with their weights: the batch and its mirror ('flip'),
    and for 'multicrop' (airbench's TTA) also both shifted one pixel down-right and up-left
    (reflected border, as in training), the unshifted pair weighing half."""
    if tta in (None, "none"):
        return [(xb, 1.0)]
    if tta not in ("flip", "multicrop"):
        raise ValueError(f"tta must be None, 'flip' or 'multicrop', got {tta!r}")
    axis = _layout_axis_w(model)
    mirror = (lambda v: v[:, :, ::-1]) if axis == 2 else (lambda v: v[..., ::-1])
    if tta == "flip":
        return [(xb, 0.5), (mirror(xb), 0.5)]
    shifted = [fcdata.shift_batch(xb, d, d, axis, fill_mode="reflect") for d in (1, -1)]
    return [(xb, 0.25), (mirror(xb), 0.25)] + [(v, 0.125) for s in shifted for v in (s, mirror(s))]


def predict_logits(model, x, batch_size=256, tta=None, preprocess=None):
    preprocess = preprocess or fcdata.default_preprocess
    out = []
    for start in range(0, len(x), batch_size):
        xb = preprocess(x[start : start + batch_size])
        xp = array_module(xb)
        out.append(
            sum(
                weight * model.forward(xp.ascontiguousarray(v), training=False, logits=True)
                for v, weight in _views(model, xb, tta)
            )
        )
    xp = array_module(out[0]) if out else np
    return xp.concatenate(out) if out else np.zeros((0,) + tuple(model.output_shape), np.float32)


def predict(model, x, batch_size=256, tta=None, preprocess=None):
    """Model outputs (probabilities when the model ends in softmax)."""
    return model.outputs_from_logits(predict_logits(model, x, batch_size, tta, preprocess))


def evaluate(model, x, y, batch_size=256, tta=None, preprocess=None):
    """(mean loss, accuracy)."""
    logits = predict_logits(model, x, batch_size, tta, preprocess)
    xp = array_module(logits)
    y = xp.asarray(y)
    loss, _ = model.loss.value_and_grad(logits, y)
    return loss, float((logits.argmax(axis=1) == y).mean())


def _reseed(model, seed, epoch):
    for i, layer in enumerate(model.running_layers()):
        if isinstance(layer, Dropout):
            layer.rng = np.random.default_rng([seed, epoch, i])


def _train_epoch(
    model, x, y, batch_size, epoch, seed, augment, preprocess, drop_last, verbose, epochs
):
    rng = np.random.default_rng([seed, epoch])
    _reseed(model, seed, epoch)
    batches = fcdata.prefetch(
        fcdata.batches(
            x,
            y,
            batch_size,
            rng=rng,
            augment=augment,
            preprocess=preprocess,
            drop_last=drop_last,
            epoch=epoch,
        )
    )
    steps = len(x) // batch_size if drop_last else math.ceil(len(x) / batch_size)
    bar = fcdata.progress(
        batches, total=steps, desc=f"epoch {epoch + 1}/{epochs}", disable=not verbose
    )
    loss_sum = correct = seen = 0.0
    for xb, yb in bar:
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported just below
            logits = model.forward(xb, training=True, logits=True)
            loss, dlogits = model.loss.value_and_grad(logits, yb)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss} at epoch {epoch + 1}, step {model.optimizer.iterations}: "
                f"training diverged; lower the learning rate (now "
                f"{model.optimizer.current_lr:.3g}) or check the input data for NaN/inf"
            )
        model.backward(dlogits, from_logits=True)
        model.optimizer.step(model)
        n = len(yb)
        loss_sum += loss * n
        correct += float((logits.argmax(axis=1) == array_module(logits).asarray(yb)).sum())
        seen += n
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(
                loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False
            )
    return loss_sum / max(seen, 1), correct / max(seen, 1)


def save_checkpoint(path, model, epoch, history):
    arrays = {f"weights/{k}": v for k, v in model.get_weight_dict().items()}
    arrays.update({f"optimizer/{k}": v for k, v in model.optimizer.state_dict().items()})
    arrays["epoch"] = np.array(epoch)
    arrays["history"] = np.array(json.dumps(history))
    _npz.save(path, arrays)


def load_checkpoint(path, model):
    """Restore weights and optimiser state; returns (epochs done, history)."""
    data = _npz.load(path, "checkpoint")
    if "epoch" not in data or "history" not in data:
        raise _npz.FileFormatError(
            f"{path} is an .npz file but not a fastconv checkpoint (no epoch or history in it)"
        )
    try:
        model.set_weight_dict({k[8:]: v for k, v in data.items() if k.startswith("weights/")})
    except ValueError as e:
        raise _npz.FileFormatError(f"{path} does not fit this model: {e}") from None
    model.optimizer.load_state_dict(
        {k[10:]: v for k, v in data.items() if k.startswith("optimizer/")}
    )
    return int(data["epoch"]), json.loads(str(data["history"]))


def fit(
    model,
    x,
    y,
    batch_size=32,
    epochs=1,
    validation_data=None,
    *,
    validation_split=0.0,
    validation_freq=1,
    seed=0,
    augment=None,
    preprocess=None,
    tta=None,
    checkpoint=None,
    resume=False,
    drop_last=False,
    verbose=True,
    print_fn=print,
    output_dir=None,
):
    """Train; returns the history (one dict per epoch). validation_split holds out a seeded
    random fraction of (x, y) as validation data. As in Keras, validation runs after every
    `validation_freq`-th epoch, and here also after the final one; test accuracy uses `tta`
    in the final epoch only (earlier epochs evaluate the plain images). `checkpoint` is a
    .npz path written after every epoch; resume=True continues from it. With `output_dir`,
    metrics.csv, metrics.json and curves.png are written there at the end."""
    validation_freq = _args.positive_int(validation_freq, "validation_freq")
    preprocess = preprocess or fcdata.default_preprocess
    if validation_split:  # split first: augmentation only ever sees the training part
        (x, y), validation_data = fcdata.train_val_split(x, y, validation_split, seed)
    history, start = [], 0
    if checkpoint:
        _npz.stale_partial(checkpoint).unlink(missing_ok=True)  # from a write that was killed
    if resume:
        start, history = load_checkpoint(checkpoint, model)
        print_fn(f"resumed from {checkpoint} after epoch {start}")
    print_fn(HEADER)
    for h in history:
        print_fn(_row(h))
    for epoch in range(start, epochs):
        began = time.perf_counter()
        lr = model.optimizer.current_lr
        with array_cache():  # the same big arrays every step: reuse their memory
            loss, acc = _train_epoch(
                model,
                x,
                y,
                batch_size,
                epoch,
                seed,
                augment,
                preprocess,
                drop_last,
                verbose,
                epochs,
            )
            test_acc = test_loss = None
            final = epoch + 1 == epochs
            if validation_data is not None and (final or (epoch + 1) % validation_freq == 0):
                # test-time augmentation multiplies the evaluation cost: only the final epoch
                test_loss, test_acc = evaluate(
                    model,
                    *validation_data,
                    batch_size=max(batch_size, 256),
                    tta=tta if final else None,
                    preprocess=preprocess,
                )
        history.append(
            dict(
                epoch=epoch + 1,
                loss=loss,
                train_acc=acc,
                test_loss=test_loss,
                test_acc=test_acc,
                lr=lr,
                seconds=time.perf_counter() - began,
            )
        )
        print_fn(_row(history[-1]))
        if checkpoint:
            save_checkpoint(checkpoint, model, epoch + 1, history)
    if output_dir:
        write_metrics(history, output_dir, print_fn)
    return history


def write_metrics(history, output_dir, print_fn=print):
    os.makedirs(output_dir, exist_ok=True)
    keys = ["epoch", "loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"]
    with open(os.path.join(output_dir, "metrics.csv"), "w") as f:
        f.write(",".join(keys) + "\n")
        for h in history:
            f.write(",".join("" if h.get(k) is None else f"{h[k]:.6g}" for k in keys) + "\n")
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(history, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print_fn("matplotlib is not installed: skipped curves.png (pip install matplotlib)")
        return

    def curve(ax, key, label):  # epochs without validation have no test values
        points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="." if key.startswith("test") else None, label=label)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    curve(ax1, "loss", "train loss")
    curve(ax1, "test_loss", "test loss")
    curve(ax2, "train_acc", "train acc")
    curve(ax2, "test_acc", "test acc")
    for ax, title in ((ax1, "loss"), (ax2, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "curves.png"), dpi=100)
    plt.close(fig)
