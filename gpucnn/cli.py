"""The ``gpucnn`` command (also ``python -m gpucnn``).

Subcommands: ``train`` (default data: the bundled digits), ``evaluate``,
``predict``, ``export``, ``info`` and ``check``.  Errors print one line on stderr and exit
non-zero; ``--debug`` prints the traceback as well.
"""
from __future__ import annotations

import argparse
import platform
import signal
import sys
import traceback
import warnings
from pathlib import Path

from .backends import DEVICES
from .validation import FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Rule

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143   # 128 + SIGTERM, as a shell reports a process that SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM outside training (which handles it itself): stop like Ctrl-C, in one line."""


def _version():
    from . import __version__
    return __version__


# =========================================================================== train

def cmd_train(args):
    from .distributed import launched_rank, launched_size
    from .runs import run_training
    from .trainer import TrainingDiverged, TrainingInterrupted
    overrides = {k: getattr(args, k) for k in (
        "data_dir", "t10k_split", "limit_train", "limit_test", "model", "epochs", "batch_size",
        "lr", "lr_decay", "optimizer", "seed", "device", "dtype", "schedule", "augment", "label_smoothing", "warmup", "momentum", "weight_decay",
        "image_size")}
    if args.data is not None:
        overrides["data"] = args.data  # with --resume: allowed only when it matches the checkpoint
    comm = None
    if launched_size() > 1:   # started by mpiexec/mpirun/srun with more than one process
        from .distributed import DistributedError, create_communicator
        try:
            comm = create_communicator(use_device=args.device != "cpu")
        except DistributedError:
            if launched_rank() != 0:
                return EXIT_ERROR  # rank 0 says what to install
            raise
    root = comm is None or comm.rank == 0
    try:
        result = run_training(out=args.out, resume=args.resume, runs_root=args.runs_dir,
                              progress=root and not args.no_progress and sys.stderr.isatty(),
                              log=print, comm=comm,
                              graph=False if args.no_graph else "auto", **overrides)
    except TrainingInterrupted as exc:
        _end_job_unless_all_ranks(comm, exc, args)
        if root:
            print(f"gpucnn: {exc.message}", file=sys.stderr)
        return EXIT_TERMINATED if exc.signal == "SIGTERM" else EXIT_INTERRUPTED
    except TrainingDiverged as exc:
        _end_job_unless_all_ranks(comm, exc, args)
        if root:
            print(f"gpucnn: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BaseException as exc:
        if comm is None:
            raise
        _end_job_unless_all_ranks(comm, exc, args)
        if root:
            raise   # main() prints the one line
        return EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_ERROR
    if root:
        print(result.summary())
    return 0


def _end_job_unless_all_ranks(comm, exc, args):
    """In a multi-process run, an exception that only this rank raised (the others wait for it
    in a collective) prints one line naming the rank and ends every rank (MPI_Abort).  One
    that every rank raised together (``exc.all_ranks``) returns, for rank 0 to report."""
    if comm is None or getattr(exc, "all_ranks", False):
        return
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(f"gpucnn: rank {comm.rank} of {comm.size}: error: {_one_line(exc)}; ending all ranks",
          file=sys.stderr)
    comm.abort(EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_ERROR)


# =========================================================================== evaluate

def cmd_evaluate(args):
    from .checkpoint import CheckpointError
    from .evaluation import evaluate
    from .plots import plot_confusion
    from .runs import dataset_for, load_model
    model, ckpt, cfg = load_model(args.checkpoint, device=args.device)
    if args.data is not None and args.data != cfg.data:
        cfg.data = args.data
        cfg.t10k_split = cfg.data_dir = None  # the checkpoint's folder and split were for its own data
    if args.data_dir is not None:
        cfg.data_dir = str(Path(args.data_dir).expanduser().resolve())
    if args.t10k_split is not None:
        cfg.t10k_split = args.t10k_split
    dataset = dataset_for(cfg)
    want = tuple(ckpt.state["dataset"]["input_shape"])
    if dataset.input_shape != want:
        raise CheckpointError(f"the model in {ckpt.path} takes {want} images but {cfg.data} has "
                              f"{dataset.input_shape}")
    res = evaluate(model, dataset.test, batch_size=args.batch_size, classes=dataset.classes)
    print(f"{ckpt.path}: {cfg.model} on {dataset.source}, test split ({len(dataset.test)} images), "
          f"device {model.device}")
    print(res.format_table())
    out = Path(args.out) if args.out else ckpt.path.parent / "confusion.png"
    plot_confusion(res.confusion, list(dataset.classes), out,
                   title=f"{cfg.data} test: {100 * res.accuracy:.2f}% correct")
    print(f"test accuracy {100 * res.accuracy:.2f}% ({res.correct}/{res.total}), loss {res.loss:.4f}; "
          f"confusion matrix in {out}")
    return 0


# =========================================================================== predict

def cmd_predict(args):
    import numpy as np
    from .data import load_image, normalize
    from .errors import NonFiniteError
    from .evaluation import predict_proba
    from .runs import load_model
    model, ckpt, cfg = load_model(args.checkpoint, device=args.device)
    info = ckpt.state["dataset"]
    shape, classes = tuple(info["input_shape"]), list(info["classes"])
    images, notes = [], []
    for path in args.images:
        img, note = load_image(path, shape, invert=args.invert, resize=not args.no_resize)
        images.append(img)
        notes.append(note)
    batch = normalize(np.stack(images), info["mean"], info["std"])
    try:
        probs = predict_proba(model, batch)
    except NonFiniteError as exc:   # never print p=nan as a prediction
        rows = getattr(exc, "rows", None)
        if rows:
            raise NonFiniteError(f"{args.images[rows[0]]}: the network's outputs are not finite "
                                 f"(the weights in {ckpt.path} are finite; the image overflows "
                                 f"the network), so there is no prediction") from None
        raise NonFiniteError(f"{ckpt.path}: {exc}") from None
    top = max(1, min(args.top, len(classes)))
    for path, p, note in zip(args.images, probs, notes):
        order = np.argsort(-p, kind="stable")[:top]
        best = order[0]
        line = f"{path}: {classes[best]} (p={p[best]:.3f})"
        if top > 1:
            line += "  next: " + ", ".join(f"{classes[i]} {p[i]:.3f}" for i in order[1:])
        if note:
            line += f"  [{'; '.join(note)}]"
        print(line)
    return 0


# =========================================================================== export

def cmd_export(args):
    from .export import export_checkpoint
    out, model, ckpt = export_checkpoint(args.checkpoint, args.format, args.out,
                                         overwrite=args.force, opset=args.opset)
    print(f"{ckpt.path} -> {out} ({args.format}, {sum(p.data.size for p in model.parameters())} "
          f"parameters)")
    return 0


def _add_export_parser(sub, common):
    from .export import DEFAULT_OPSET, FORMATS
    x = sub.add_parser("export", parents=[common], help="write a run's model as safetensors or ONNX",
                       description="Export a checkpoint's weights to safetensors (PyTorch state_dict "
                       "keys) or its whole network to ONNX (dynamic batch). Needs "
                       'pip install "gpucnn[export]".')
    x.add_argument("--checkpoint", required=True, metavar="RUN", help="checkpoint.npz or its run folder")
    x.add_argument("--format", required=True, choices=tuple(FORMATS))
    x.add_argument("--out", metavar="FILE", help="default: model.safetensors / model.onnx beside the checkpoint")
    x.add_argument("--force", action="store_true", help="replace an existing output file")
    x.add_argument("--opset", type=_positive_int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET})")
    x.set_defaults(func=cmd_export)


# =========================================================================== info

def _device_lines():
    from .backends import default_device, resolve_device
    env = default_device()
    via = f" (GPUCNN_DEVICE={env})" if env != "auto" else ""
    lines = []
    try:
        backend, note = resolve_device("auto")
        reason = note or ("as the variable asks" if via else "a CUDA GPU is usable")
        lines.append(f"device: 'auto'{via} chooses {backend.name} -- {reason}")
    except Exception as exc:
        backend = None
        lines.append(f"device: 'auto'{via} cannot be resolved ({type(exc).__name__}: {exc})")
    return backend, lines


def _cupy_lines(cuda_usable):
    lines = []
    try:
        import cupy
    except ImportError:
        return ["CuPy: not installed (pip install gpucnn[cuda12] or gpucnn[cuda13])"], None
    except Exception as exc:
        return [f"CuPy: fails to import ({type(exc).__name__}: {exc})"], None
    lines.append(f"CuPy: {cupy.__version__}")
    rt = cupy.cuda.runtime

    def ver(v):
        return f"{v // 1000}.{v % 1000 // 10}"

    try:
        lines.append(f"CUDA runtime (CuPy built for): {ver(rt.runtimeGetVersion())}")
    except Exception as exc:
        lines.append(f"CUDA runtime: unknown ({type(exc).__name__})")
    try:
        driver = rt.driverGetVersion()
        lines.append(f"CUDA driver: {ver(driver)}" if driver else "CUDA driver: none (no NVIDIA driver found)")
    except Exception as exc:
        lines.append(f"CUDA driver: unknown ({type(exc).__name__}: {' '.join(str(exc).split())})")
    try:
        count = rt.getDeviceCount()
        for i in range(count):
            props = rt.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            mem = props.get("totalGlobalMem", 0) / 2**30
            lines.append(f"GPU {i}: {name} ({mem:.0f} GiB, compute capability "
                         f"{props.get('major', '?')}.{props.get('minor', '?')})")
        if count == 0:
            lines.append("GPU: none visible")
    except Exception as exc:
        lines.append(f"GPU: none usable ({type(exc).__name__}: {' '.join(str(exc).split())})")
    return lines, cupy if cuda_usable else None


_MISSING_HEADERS = ("not compiled: it includes <mma.h>, and no CUDA toolkit include directory "
                    "was found (set CUDA_PATH); allow_tf32 then runs the float32 kernel")


def _needs_missing_headers(kernels, file):
    """A file that includes a CUDA toolkit header when no toolkit include directory is found."""
    return file in getattr(kernels, "NEEDS_CUDA_HEADERS", {}) and not kernels.cuda_include_dirs()


def _kernel_lines(cupy):
    try:
        from .backends import kernels
    except ImportError as exc:
        return [f"kernels: the kernel loader is unavailable ({exc})"]
    try:
        where = kernels.kernel_dir()
    except Exception as exc:
        return [f"kernels: sources not found ({exc})"]
    files = list(getattr(kernels, "KERNELS", {}))
    if cupy is None:
        return _nvrtc_only_lines(kernels, where, files)
    lines = [f"kernels ({where}):"]
    loader = kernels.CupyKernelLoader(cupy)
    for file in files:
        if _needs_missing_headers(kernels, file):
            lines.append(f"  {file}: {_MISSING_HEADERS}")
            continue
        results = []
        for dt in ("float32", "float64"):
            try:
                loader.module(file, dt)
                results.append(f"{dt} ok")
            except Exception as exc:
                results.append(f"{dt} FAILED: {' '.join(str(exc).split())[:300]}")
        lines.append(f"  {file}: {', '.join(results)}")
    return lines


def _nvrtc_only_lines(kernels, where, files):
    """Without a GPU: compile each kernel file to PTX with NVRTC alone, when its Python bindings exist."""
    try:
        from cuda.bindings import nvrtc
        err, major, minor = nvrtc.nvrtcVersion()
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(str(err))
        err, archs = nvrtc.nvrtcGetSupportedArchs()
        arch = min(a for a in archs if a >= 70)
    except Exception as exc:
        return [f"kernels ({where}): {', '.join(files)} -- not compiled here: no usable GPU and no "
                f"NVRTC Python bindings ({type(exc).__name__})"]
    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS
    lines = [f"kernels ({where}), compiled to PTX by NVRTC {major}.{minor} for compute_{arch} "
             f"(no GPU, so not loaded):"]
    for file in files:
        exprs = [e for (f, _, _, e) in kernels.instantiations() if f == file]
        if _needs_missing_headers(kernels, file):
            lines.append(f"  {file}: {_MISSING_HEADERS}")
            continue
        try:
            err, prog = nvrtc.nvrtcCreateProgram(kernels.read_source(file).encode(), file.encode(), 0, [], [])
            try:
                for expr in exprs:
                    nvrtc.nvrtcAddNameExpression(prog, expr.encode())
                opts = ([o.encode() for o in kernels.nvrtc_options(file)]
                        + [f"-arch=compute_{arch}".encode()])
                (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
                if err == ok:
                    result = f"ok ({len(exprs)} instantiations)"
                else:
                    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
                    buf = b" " * size
                    nvrtc.nvrtcGetProgramLog(prog, buf)
                    log = " ".join(buf.decode(errors="replace").rstrip("\x00").split())
                    result = f"FAILED: {log[:300]}"
            finally:
                nvrtc.nvrtcDestroyProgram(prog)
        except Exception as exc:
            result = f"FAILED: {type(exc).__name__}: {exc}"
        lines.append(f"  {file}: {result}")
    return lines


def cmd_info(args):
    import numpy as np
    print(f"gpucnn {_version()} (Python {platform.python_version()}, NumPy {np.__version__}) "
          f"from {Path(__file__).resolve().parent}")
    backend, lines = _device_lines()
    for line in lines:
        print(line)
    cuda_usable = backend is not None and backend.name == "cuda"
    cupy_lines, cupy = _cupy_lines(cuda_usable)
    for line in cupy_lines:
        print(line)
    for line in _kernel_lines(cupy):
        print(line)
    print(_mpi_line())
    return 0


def _mpi_line():
    """Whether multi-process training can run here (without initialising MPI)."""
    try:
        import mpi4py
        initialize = mpi4py.rc.initialize
        mpi4py.rc.initialize = False    # MPI_Get_library_version needs no MPI_Init
        try:
            from mpi4py import MPI
        finally:
            mpi4py.rc.initialize = initialize
        library = " ".join(MPI.Get_library_version().split()[:3])
    except ImportError:
        from .distributed import INSTALL_HINT
        return f"MPI: mpi4py not installed; multi-process training needs it: {INSTALL_HINT}"
    except Exception as exc:  # noqa: BLE001 - a broken MPI install: say so, keep going
        return f"MPI: mpi4py cannot load its MPI library ({type(exc).__name__}: {exc})"
    return (f"MPI: mpi4py {mpi4py.__version__} on {library}; multi-process training: "
            f"mpiexec -n N gpucnn train ...")


# =========================================================================== check

def cmd_check(args):
    try:
        from . import check
    except ImportError as exc:
        raise RuntimeError(f"`gpucnn check` is not available in this build ({exc})") from None
    rows = check.run_check(args.device)
    print(check.format_report(rows))
    failed = [r for r in rows if not r.get("ok", True)]
    if failed:
        print(f"gpucnn: error: {len(failed)} backend checks failed (see the FAIL rows above)",
              file=sys.stderr)
        return EXIT_ERROR
    return 0


# =========================================================================== parser

# argparse types: the shared number rules, reading text (messages: "expected a positive integer, got '0'")
_positive_int = POSITIVE_INT.parse


def _image_size(text):
    """``--image-size``: "N" or "HxW" with positive integers, as [H, W]."""
    parts = text.lower().split("x")
    try:
        hw = [int(p) for p in parts]
    except ValueError:
        hw = []
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive integers, got {text!r}")
    return hw
_nonneg_int = NON_NEGATIVE_INT.parse
_positive_float = POSITIVE.parse
_decay = FRACTION.parse
_nonneg_float = NON_NEGATIVE.parse
_unit_open = Rule(float, 0, 1, high_open=True).parse


def build_parser():
    from .data import DATASETS
    from .models import MODELS
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    parser = argparse.ArgumentParser(
        prog="gpucnn", parents=[common],
        description="Train and use small CNNs with explicit backprop, on NumPy or our own CUDA kernels.")
    parser.add_argument("--version", action="version", version=f"gpucnn {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from .runs import DEFAULTS, PAPER_RECIPE, RECIPES, SCHEDULES
    r = PAPER_RECIPE
    epilog = "per-dataset defaults:\n" + "\n".join(
        f"  {name:8} --model {d['model']} --epochs {d['epochs']} --batch-size {d['batch_size']} "
        f"--optimizer {d['optimizer']} --lr {d['lr']:g} --lr-decay {d['lr_decay']:g}"
        for name, d in DEFAULTS.items()) + (
        f"\nper-model recipe ({', '.join(RECIPES)}; He et al. 2016, scaled to --epochs):\n"
        f"  --epochs {r['epochs']} --batch-size {r['batch_size']} --optimizer {r['optimizer']} "
        f"--lr {r['lr']:g} --momentum {r['momentum']:g} --weight-decay {r['weight_decay']:g} "
        f"--schedule {r['schedule']} --augment")
    t = sub.add_parser("train", parents=[common], help="train a CNN (default: the bundled digits)",
                       description="Train a CNN. With no options: a small conv net on the bundled "
                       "8x8 handwritten digits. Unset options take per-dataset defaults. "
                       "Under `mpiexec -n N` it trains data-parallel on N processes (one GPU "
                       "each when there are enough); --batch-size stays the global batch.",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--data", choices=DATASETS, default=None, help="dataset (default digits)")
    t.add_argument("--data-dir", metavar="DIR", help="folder with the MNIST IDX or CIFAR-10 binary files, or (--data folder) an image folder: train/ and test/ (or val/) with one sub-folder per class, only class folders, or a .tar.gz of one")
    t.add_argument("--t10k-split", type=_positive_int, metavar="N",
                   help="MNIST from the t10k files alone: first N images train, the rest test")
    t.add_argument("--limit-train", type=_positive_int, metavar="N", help="use only the first N training images")
    t.add_argument("--limit-test", type=_positive_int, metavar="N", help="use only the first N test images")
    t.add_argument("--model", choices=sorted(MODELS), help="network (default: lenet for mnist, cifar otherwise)")
    t.add_argument("--epochs", type=_positive_int, help="total number of epochs")
    t.add_argument("--batch-size", type=_positive_int)
    t.add_argument("--lr", type=_positive_float, help="learning rate")
    t.add_argument("--lr-decay", type=_decay, metavar="G",
                   help="multiply the learning rate by G after every epoch (0 < G <= 1)")
    t.add_argument("--image-size", type=_image_size, metavar="HxW",
                   help="--data folder: resize every image to H x W (or N x N for N); without it "
                        "images of different sizes are refused")
    t.add_argument("--schedule", choices=SCHEDULES,
                   help="learning-rate schedule over the whole run, stepped every iteration: "
                        "multistep (/10 at 50%% and 75%%, the ResNet paper's), step (/10 after "
                        "each third), cosine (to 0), constant; none: --lr-decay per epoch")
    t.add_argument("--warmup", type=_nonneg_float, metavar="EPOCHS",
                   help="linear warm-up from 0.1 x lr over EPOCHS epochs, then the schedule")
    t.add_argument("--augment", action="store_true", default=None,
                   help="random crops (images padded by 1/8 of their size) and horizontal flips")
    t.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no augmentation (the ResNet recipe turns it on)")
    t.add_argument("--label-smoothing", type=_unit_open, metavar="EPS",
                   help="cross-entropy with label smoothing EPS (PyTorch's formula; default 0)")
    t.add_argument("--momentum", type=_unit_open, help="SGD momentum (default 0.9)")
    t.add_argument("--weight-decay", type=_nonneg_float, metavar="WD",
                   help="L2 weight decay (default 0; 1e-4 in the ResNet recipe)")
    t.add_argument("--optimizer", choices=("sgd", "adam"))
    t.add_argument("--seed", type=_nonneg_int, help="seed for initialisation and shuffling (default 0)")
    t.add_argument("--device", choices=DEVICES, help="default auto (a GPU when usable)")
    t.add_argument("--dtype", choices=("float32", "float64"))
    t.add_argument("--out", metavar="DIR", help="run directory (default: a new folder under --runs-dir)")
    t.add_argument("--runs-dir", default="runs", metavar="DIR", help="where new run folders go (default runs/)")
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue the run saved in CHECKPOINT")
    t.add_argument("--no-graph", action="store_true",
                   help="on a GPU, run every step eagerly instead of replaying it as one CUDA graph")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (it is shown only when stderr is a terminal)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", parents=[common], help="accuracy, per-class table, confusion matrix",
                       description="Evaluate a checkpoint on its dataset's test split.")
    e.add_argument("--checkpoint", required=True, metavar="PATH")
    e.add_argument("--data", choices=DATASETS)
    e.add_argument("--data-dir", metavar="DIR")
    e.add_argument("--t10k-split", type=_positive_int, metavar="N")
    e.add_argument("--device", choices=DEVICES)
    e.add_argument("--batch-size", type=_positive_int, default=500)
    e.add_argument("--out", metavar="PNG", help="confusion-matrix image (default: confusion.png beside the checkpoint)")
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", parents=[common], help="classify image files (PNG or .npy)",
                       description="Print the predicted class and its probability for each image.")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--top", type=_positive_int, default=1, help="also show the next most likely classes")
    p.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                   help="invert grey images (auto: when the background is light)")
    p.add_argument("--no-resize", action="store_true", help="fail instead of resizing other sizes")
    p.set_defaults(func=cmd_predict)

    _add_export_parser(sub, common)

    i = sub.add_parser("info", parents=[common], help="versions, device choice, GPU, kernel compilation")
    i.set_defaults(func=cmd_info)

    c = sub.add_parser("check", parents=[common], help="backend parity report on this machine")
    c.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: compare the GPU with the CPU when one is usable (default)")
    c.set_defaults(func=cmd_check)
    return parser


def _one_line(exc):
    text = " ".join(str(exc).split())
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError)) and exc.filename and \
            exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    return text or type(exc).__name__


def _command_of(argv):
    """The subcommand named in argv (for messages before argparse has run), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line each, without NumPy's or Python's source lines."""
    if issubclass(category, RuntimeWarning):
        return  # floating-point overflow (NumPy's, in any thread): its outcome is checked and reported
    print(f"gpucnn: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _on_sigterm(signum, frame):
    raise Terminated


def main(argv=None):
    """Entry point of the ``gpucnn`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGTERM
        pass
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            return _main(argv)
    except KeyboardInterrupt as exc:
        # Ctrl-C / SIGTERM before training started (training reports its own interrupts)
        if debug:
            traceback.print_exc()
        word = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        where = " before training started; nothing was saved" if _command_of(argv) == "train" else ""
        print(f"gpucnn: {word}{where}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except Exception as exc:  # one line for users; --debug for the traceback
        if debug:
            traceback.print_exc()
        print(f"gpucnn: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    from .backends import default_device
    default_device()  # an invalid GPUCNN_DEVICE is an error before any work, whatever the command
    return args.func(args) or 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
