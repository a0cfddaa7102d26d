"""The `fastconv` command: train, viz, bench, check, info (`fastconv --help`,
`fastconv CMD --help`).

Errors a user can fix (a missing or corrupt data file, a bad flag, no checkpoint to resume)
print one line and exit with status 2; Ctrl-C during training prints where the last
checkpoint is and how to continue, and exits with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------
# fastconv train


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def _widths(text):
    try:
        widths = tuple(_positive_int(w) for w in text.split(","))
    except argparse.ArgumentTypeError:
        widths = ()
    if len(widths) != 3:
        raise argparse.ArgumentTypeError(
            f"expected three positive ints like 64,128,256, got {text!r}"
        )
    return widths


_KINDS = {"positive": _positive_int, "widths": _widths, "float": float}


def _recipe_flags(parser, names=None):
    """One flag per Recipe field (or per field in `names`), with the field's default, help
    and choices."""
    from .recipe import Recipe

    for f in dataclasses.fields(Recipe):
        if names is not None and f.name not in names:
            continue
        meta = dict(f.metadata)
        flag = "--" + f.name.replace("_", "-")
        kind = meta.pop("kind", None)
        if isinstance(f.default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, **meta
            )
            continue
        convert = _KINDS[kind] if kind else type(f.default)
        metavar = "A,B,C" if kind == "widths" else None
        shown = ",".join(map(str, f.default)) if kind == "widths" else f.default
        parser.add_argument(
            flag,
            type=convert,
            default=f.default,
            metavar=metavar,
            help=f"{meta.pop('help')} (default: {shown})",
            **meta,
        )


def _train_parser(sub):
    p = sub.add_parser(
        "train",
        help="train a CNN on CIFAR-10 with fastconv's kernels",
        description="Train the reference CNN (or the tutorial's) on CIFAR-10 "
        "with nothing but fastconv's kernels. Writes the epoch table "
        "to stdout and checkpoint.npz, model.npz, metrics.csv, "
        "metrics.json and curves.png to --output.",
    )
    p.add_argument(
        "--data",
        help="cifar10-jpeg.tar.gz, cifar-10-python.tar.gz or an unpacked "
        "folder of either; without it, the cached official archive, else a download "
        "of it (163 MB, once) into ~/.cache/fastconv",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads for the kernels (default: all cores)",
    )
    p.add_argument("--output", default="runs/train", help="folder for checkpoint and metrics")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _recipe_flags(p)
    p.set_defaults(run=_train)
    return p


def _single_threaded_blas():
    """NumPy's BLAS serves only the small Dense layer here, but its idle worker threads spin
    for a while after every call and take cores from the convolution kernels."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: training works without it, a little slower
        return None
    return threadpool_limits(limits=1, user_api="blas")


def _train(args):
    import fastconv

    from ._npz import FileFormatError
    from .data import DatasetError
    from .nn import TrainingDiverged
    from .recipe import Recipe, train

    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    if args.device == "cuda":
        ok, why = fastconv.cuda_available()
        if not ok:
            raise UsageError(f"--device cuda: {why}; or use --device cpu")
    if args.threads:
        fastconv.set_num_threads(args.threads)
    checkpoint = os.path.join(args.output, "checkpoint.npz")
    if args.resume and not os.path.exists(checkpoint):
        raise UsageError(
            f"--resume: no checkpoint at {checkpoint}; run without --resume to "
            f"start fresh, or pass the --output of the run to continue"
        )
    blas_limit = _single_threaded_blas()  # noqa: F841 - the limit lasts while it is referenced
    try:
        train(
            recipe,
            args.data,
            output=args.output,
            device=args.device,
            resume=args.resume,
            verbose=not args.quiet,
        )
    except (DatasetError, FileNotFoundError, FileFormatError) as e:
        raise UsageError(str(e)) from None
    except TrainingDiverged as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_interrupted_message(checkpoint, args), file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _interrupted_message(checkpoint, args):
    if not os.path.exists(checkpoint):
        return "interrupted before the first epoch ended: no checkpoint was written"
    words = [w for w in args.argv if w != "--resume"]
    return (
        f"interrupted; the last checkpoint is {checkpoint}; continue with: "
        f"{shlex.join(['fastconv', *words, '--resume'])}"
    )


# ---------------------------------------------------------------------------------------
# fastconv viz

# the Recipe fields that decide a zoo network's layers and its initial weights
_NETWORK_FIELDS = ("model", "widths", "activation", "whiten_width", "seed")


def _viz_parser(sub):
    p = sub.add_parser(
        "viz",
        help="draw a model's first filters or a layer's feature maps",
        description="Draw the filters of MODEL's first convolution, or with "
        "--layer the feature maps of that layer for IMAGE, to a "
        "picture (needs matplotlib: the [viz] extra).",
    )
    p.add_argument(
        "source",
        metavar="MODEL",
        help="a model.npz written by fastconv train (its network: --model and the "
        "flags below, as given to fastconv train), or a zoo network's name "
        "(reference, tutorial, tutorial_deeper) with its initial weights",
    )
    p.add_argument(
        "image",
        metavar="IMAGE",
        nargs="?",
        help="with --layer: an image file of any size, resized to the model's input",
    )
    p.add_argument(
        "--layer",
        help="draw this layer's feature maps (default: the filters of the first convolution)",
    )
    p.add_argument("-o", "--output", default="viz.png", help="picture to write (viz.png)")
    _recipe_flags(p, _NETWORK_FIELDS)
    p.set_defaults(run=_viz)
    return p


def _viz_model(args):
    """The zoo network MODEL names, or the one --model names with MODEL's weights."""
    from ._npz import FileFormatError
    from .recipe import Recipe

    networks = next(f for f in dataclasses.fields(Recipe) if f.name == "model").metadata["choices"]
    named = args.source in networks
    network = {name: getattr(args, name) for name in _NETWORK_FIELDS}
    if named:
        network["model"] = args.source
    recipe = Recipe(**network)
    model = recipe.build_model()
    if named:
        return model
    try:
        model.load_weights(args.source)
    except FileFormatError as e:  # before ValueError: it is one
        raise UsageError(str(e)) from None
    except FileNotFoundError:
        raise UsageError(
            f"MODEL {args.source} is neither a weights file nor one of the zoo "
            f"networks {', '.join(networks)}"
        ) from None
    except ValueError as e:
        raise UsageError(
            f"{args.source} does not fit the {recipe.model} network (say which "
            f"it is with --model, --widths, --whiten-width): {e}"
        ) from None
    return model


def _viz(args):
    from .data import DatasetError, Normalize, load_image

    if args.layer is not None and args.image is None:
        raise UsageError("--layer draws the feature maps of an IMAGE: give one after MODEL")
    model = _viz_model(args)
    try:
        from . import viz

        if args.layer is None:
            layer = viz.first_conv(model)
            tiles = viz.plot_filters(layer, args.output)
            what = f"the filters of {layer.name} ({len(tiles)} drawn)"
        else:
            image = load_image(args.image, model.input_shape[:2])
            maps = viz.plot_feature_maps(
                model, Normalize()(image[None])[0], args.layer, args.output
            )
            what = f"the feature maps of {args.layer} for {args.image} (shape {maps.shape})"
    except (ImportError, DatasetError, FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(f"wrote {args.output}: {what}")
    return 0


# ---------------------------------------------------------------------------------------
# fastconv bench / check / info


def _bench_parser(sub):
    p = sub.add_parser(
        "bench",
        add_help=False,
        help="time every op against PyTorch (needs the [bench] extra)",
        description="The benchmarks against PyTorch: every op's layers on the "
        "CPU (default), on the GPU (--gpu), or a training epoch of "
        "the reference network (--train); the suite's own flags "
        "follow (fastconv bench [--gpu|--train] --help).",
    )
    p.add_argument("-h", "--help", action="store_true")
    suite = p.add_mutually_exclusive_group()
    suite.add_argument("--gpu", action="store_true", help="the GPU benchmark (needs a CUDA GPU)")
    suite.add_argument(
        "--train",
        action="store_true",
        help="one epoch of the reference network against PyTorch's twin",
    )
    p.set_defaults(run=_bench)
    return p


def _bench(args):
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError(
            "the benchmark compares with PyTorch: pip install 'fastconv[bench]' "
            "(or pip install torch==2.13.0)"
        ) from None
    from .bench import cpu, gpu, train_vs_torch
    from .data import DatasetError

    suite = gpu if args.gpu else train_vs_torch if args.train else cpu
    try:
        return suite.main(args.rest + (["--help"] if args.help else [])) or 0
    except (DatasetError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None


def _check_parser(sub):
    p = sub.add_parser(
        "check",
        help="self-test every op against the NumPy reference",
        description="Run every op and its backward on small random shapes "
        "against the NumPy reference: on the CPU with every "
        "instruction set this CPU supports, and on the GPU if there "
        "is one. Prints one line per op and backend; exit status 1 "
        "on any mismatch.",
    )
    p.add_argument("--cases", type=_positive_int, default=12, help="random cases per op (12)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_check)
    return p


def _check(args):
    from . import selftest

    return 0 if selftest.run(cases=args.cases, seed=args.seed) else 1


def _info_parser(sub):
    p = sub.add_parser(
        "info",
        help="versions, instruction set, threads, CUDA",
        description="What fastconv runs with on this machine.",
    )
    p.set_defaults(run=_info)
    return p


def _info(_args):
    from . import info

    print(info.report())
    return 0


def build_parser():
    p = argparse.ArgumentParser(
        prog="fastconv",
        description="fastconv: hand-written CPU and CUDA kernels for 2-D convolution and pooling.",
    )
    sub = p.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for make in (_train_parser, _viz_parser, _bench_parser, _check_parser, _info_parser):
        make(sub)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.run is not _bench:  # only the benchmark passes flags on
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest, args.argv = rest, argv
    try:
        return args.run(args)
    except UsageError as e:
        print(f"fastconv: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def console_main():
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader went away (`fastconv info | head`): not an error
        # Python flushes stdout again at exit; point it at /dev/null so that fails quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
