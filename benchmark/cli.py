"""Command line: ``run_bench.py [run|list|report|compare] ...`` (also installed as ``cambench``).

    run_bench.py                                  # = run quick --out results/quick
    run_bench.py run SUITE [--out DIR] [--device auto|cpu|cuda|cuda:N] [--limit N] [--batch-size N]
                           [--data-root DIR] [--fresh] [--quiet] [--no-plots]
                           [--backend sequential|loky|dask] [--workers N] [--scheduler tcp://HOST:PORT]
                           [--precision fp32|tf32|bf16|fp16] [--compile] [--unit-timeout SECONDS]
                           [--method-timeout SECONDS]
                           [--estimate] [--warn-minutes M] [--no-estimate]
    run_bench.py list {methods,metrics,models,datasets,suites}
    run_bench.py report DIR
    run_bench.py compare DIR --baseline DIR_OR_SCORES_OR_CSV [--tolerance EPS] [--all] [--require-baseline-rows]

``--plugin MODULE_OR_FILE.py`` (repeatable, or ``CAMBENCH_PLUGINS=a,b``) imports modules that register
extra methods, metrics, models or datasets before anything runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .cpukernels import MODES
from .cpukernels import select as _select_cpu_kernels
from .errors import CambenchError, WeightsError
from .outdir import WRITE_ERRNOS, RunLock, check_out_dir, safe_name, write_error_line
from .registry import Registry
from .runner.progress import HEARTBEAT_S, Progress
from .runner.suite import list_suites, load_suite
from .schema import QUALITY, Claim

LISTABLE = ("methods", "metrics", "models", "datasets", "suites")


#: ``--precision`` choices; the same list as :data:`benchmark.forward.PRECISIONS` (checked by a test),
#: spelled out here so that ``--help`` does not import torch.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_bench.py",
        description="cambench: benchmark Class Activation Map methods. Without arguments: run the quick suite.",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module or .py file that registers extra entries (repeatable)",
    )
    p.add_argument(
        "--cpu-kernels",
        choices=MODES,
        default=os.environ.get("CAMBENCH_CPU_KERNELS", "portable"),
        help="portable (default): cap torch's CPU kernels at AVX2, so that scores are the same on "
        "every x86-64 machine; native: the fastest kernels of this CPU (last bits may differ). "
        "Environment: CAMBENCH_CPU_KERNELS",
    )
    sub = p.add_subparsers(dest="command")

    r = sub.add_parser("run", help="run a suite (resumes into an existing output directory)")
    r.add_argument("suite", nargs="?", default="quick", help="suite name (see `list suites`) or path to a .toml")
    r.add_argument(
        "--plugin",
        action="append",
        default=[],
        dest="run_plugin",
        metavar="MODULE",
        help="import a module or .py file that registers your methods/metrics; its methods "
        "pass the contract check before any model work (repeatable)",
    )
    r.add_argument("--out", default=None, help="output directory (default: results/<suite name>)")
    r.add_argument(
        "--focus",
        default=None,
        metavar="METHOD",
        help="claims of METHOD against every other non-baseline method on every quality metric of every "
        "experiment (Holm over them): win/tie/loss per family here and at the top of report.html, claims.csv",
    )
    r.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N | mps (default: the suite's)")
    r.add_argument("--limit", type=int, default=None, metavar="N", help="at most N images per experiment")
    r.add_argument("--batch-size", type=int, default=None, metavar="N", help="images per batch")
    r.add_argument("--data-root", default=None, metavar="DIR", help="dataset root for every experiment")
    r.add_argument(
        "--estimate",
        action="store_true",
        help="print the plan summary with its cost estimate (a one-image probe of every experiment: seconds "
        "and forwards per image x images) and stop; a run prints it anyway before its first unit",
    )
    r.add_argument(
        "--warn-minutes",
        type=float,
        default=10.0,
        metavar="M",
        help="warn (never stop) before the first unit when the estimate exceeds M minutes, naming the methods and "
        "metrics that cost most and how to leave them out (default: 10)",
    )
    r.add_argument(
        "--no-estimate",
        action="store_true",
        help="skip the plan summary and its probe (an experiment with fewer than 32 images left is never probed)",
    )
    r.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="run every real-data experiment with this model instead (its default weights and layer), e.g. "
        "efficientnet_lite0 (offline weights); generated-data experiments keep their shipped models",
    )
    r.add_argument("--fresh", action="store_true", help="discard earlier results in --out and start over")
    r.add_argument("--quiet", action="store_true", help="no progress bars or messages, only the summary")
    r.add_argument("--no-plots", action="store_true", help="tables only (no PNGs in the report)")
    r.add_argument(
        "--backend",
        default="sequential",
        choices=("sequential", "loky", "dask"),
        help="where units run: in this process, a joblib/loky process pool (one worker per GPU), "
        "or a dask.distributed cluster (default: sequential)",
    )
    r.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes for loky, or for the local dask cluster (default: one per GPU, else one per 4 cores)",
    )
    r.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="dask scheduler address, e.g. tcp://10.0.0.1:8786 (default: a local cluster)",
    )
    r.add_argument(
        "--precision",
        default="fp32",
        choices=tuple(PRECISIONS),
        help="fp32: IEEE fp32 on every device (TF32 off: CUDA scores equal CPU ones); tf32: CUDA "
        "may use TF32 for every convolution and matmul; bf16/fp16: autocast of the perturbation "
        "forwards (Score-/Ablation-CAM, deletion, ...), the gradient capture stays fp32 "
        "(default: fp32)",
    )
    r.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the perturbation forwards (CUDA graphs on CUDA: mode reduce-overhead) and "
        "let cuDNN autotune its convolutions; falls back to eager with a warning where "
        "torch.compile is unavailable",
    )

    r.add_argument(
        "--unit-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="--backend loky only: when no unit finished for SECONDS, stop the units in flight (their workers are "
        "killed), name them and go on with the others; they stay unfinished and a rerun retries them (default: none)",
    )
    r.add_argument(
        "--method-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="sequential and loky: stop a method whose explanation of a batch runs longer than SECONDS and record "
        "its rows as error ('timed out after S s'); the other methods and metrics go on (default: none)",
    )

    ls = sub.add_parser("list", help="list registered methods, metrics, models, datasets or suites")
    ls.add_argument("what", choices=LISTABLE)

    rep = sub.add_parser("report", help="rebuild tables, plots and report.html of a run directory")
    rep.add_argument("dir")
    rep.add_argument("--no-plots", action="store_true")
    rep.add_argument(
        "--partial",
        action="store_true",
        help="write the tables of an unfinished run, marked 'incomplete: k of n units' (default: refuse, exit 2)",
    )

    c = sub.add_parser("compare", help="regression gate: exit 1 if a method got worse than the baseline")
    c.add_argument("dir", help="run directory (or a leaderboard.csv) to check")
    c.add_argument(
        "--baseline",
        required=True,
        help="baseline: a results directory or its scores.parquet (paired per-image rule), or a leaderboard.csv "
        "(CI rule)",
    )
    c.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        metavar="EPS",
        help="minimum effect: absolute change a regression must exceed (default 0.02), besides the paired "
        "test (or leaving the CI)",
    )
    c.add_argument("--all", action="store_true", help="print every row, not only the changed ones")
    c.add_argument(
        "--gate-cost",
        action="store_true",
        help="let latency/memory metrics fail the gate too (off: they depend on the machine)",
    )
    c.add_argument(
        "--require-baseline-rows",
        action="store_true",
        help="exit 1 also when a baseline row is missing from the new run (rows only in the new run, "
        "e.g. a new method, never fail)",
    )

    t = sub.add_parser("train-models", help="retrain cambench's synthetic models and rewrite their shipped weights")
    t.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="models to train (default: every model with shipped weights: shapes_cnn, shapes_deep_cnn, "
        "shapes_shortcut_cnn, shapes_multilabel_cnn, volume_cnn, and BAM's composites_object_head and "
        "composites_scene_head, trained together with the composites' kept list)",
    )
    return p


def _plugins(args: argparse.Namespace) -> list[str]:
    env = [p for p in os.environ.get("CAMBENCH_PLUGINS", "").split(",") if p.strip()]
    return env + list(args.plugin) + list(getattr(args, "run_plugin", []))


def cmd_run(args: argparse.Namespace) -> int:

    suite = load_suite(args.suite)
    suite = suite.with_overrides(device=args.device, batch_size=args.batch_size, data_root=args.data_root)
    if args.focus:
        from dataclasses import replace

        focus = Claim(method=args.focus, than="all", metrics=QUALITY, group="focus", note="--focus")
        suite = replace(suite, claims=suite.claims + (focus,))
    if args.limit is not None and args.limit < 1:
        raise CambenchError(f"--limit must be a positive number of images, got {args.limit}.")
    if args.workers is not None and args.workers < 1:
        raise CambenchError(f"--workers must be a positive number of processes, got {args.workers}.")
    if not args.warn_minutes >= 0:
        raise CambenchError(f"--warn-minutes must be a number of minutes >= 0, got {args.warn_minutes}.")
    if args.unit_timeout is not None and args.backend != "loky":  # before any work (execute_units says it too)
        raise CambenchError(
            f"--unit-timeout stops a unit by killing its worker process, which needs --backend loky (got --backend "
            f"{args.backend}); add --backend loky, or drop --unit-timeout (the run reports a stalled unit anyway)."
        )
    if args.method_timeout is not None and args.backend == "dask":  # before any work (execute_units says it too)
        raise CambenchError(
            "--method-timeout stops a method with SIGALRM, which only a process's main thread receives, and dask "
            "workers run units on threads; use --backend sequential or loky, or drop --method-timeout."
        )
    out = Path(args.out) if args.out else Path("results") / safe_name(suite.name)
    check_out_dir(out)  # before importing torch, models or data
    RunLock(out).acquire().release(remove=True)  # another run into `out` is refused now, not after the imports
    if args.model:
        from .runner import load_registries as _load
        from .runner.preflight import override_model

        _load(_plugins(args))  # the model's name is checked against the registry
        suite = override_model(suite, args.model)
    from .report.build import summary_text, write_report
    from .runner import ExecOptions, load_registries, run_suite

    load_registries(_plugins(args), check=True)  # a broken plugin fails here, before any model work
    from .plugins import loaded_plugins
    from .runner.preflight import check_suite_methods

    check_suite_methods(suite, [m for p in loaded_plugins() for m in p.methods])  # 3-D, multi-label inputs too
    from .runner import plan_run

    plan = plan_run(suite, limit=args.limit)  # datasets are cached: run_suite's own plan reuses them
    for line in [] if args.quiet else [*_default_methods_note(plan), *_small_n_warnings(plan)]:
        print(line, file=sys.stderr)
    if args.estimate:  # the plan's cost from a short probe of every experiment, then stop
        from .runner import resolve_device
        from .runner.estimate import estimate_plan, estimate_text, warning_text

        estimates = estimate_plan(plan, resolve_device(suite.device), min_images=1)
        print(estimate_text(estimates))
        warn = warning_text(estimates, args.warn_minutes)
        if warn:
            print(warn)
        return 0
    # a loky/dask worker's own progress line inside a long unit, where the parent draws no bars
    beat = None if args.quiet or args.backend == "sequential" or sys.stderr.isatty() else HEARTBEAT_S
    res = run_suite(
        suite,
        out,
        fresh=args.fresh,
        limit=args.limit,
        quiet=args.quiet,
        report=partial(write_report, plots=not args.no_plots),
        backend=args.backend,
        workers=args.workers,
        scheduler=args.scheduler,
        options=ExecOptions(
            precision=args.precision,
            compile=args.compile,
            unit_timeout_s=args.unit_timeout,
            method_timeout_s=args.method_timeout,
            heartbeat_s=beat,
        ),
        plugins=_plugins(args),
        warn_minutes=None if args.no_estimate else args.warn_minutes,
    )
    rep = res.report
    print(
        f"\ncambench suite {suite.name!r} (hash {res.plan.hash}): {len(res.ran)} unit(s) run, "
        f"{len(res.reused)} reused, {len(rep.scores)} score rows -> {out}"
    )
    data = rep.scores["method"] == "(data)"
    n_err = int(((rep.scores["status"] == "error") & ~data).sum())
    if n_err:
        print(f"{n_err} score row(s) failed: see {out / 'failures.csv'}")
    _print_notes(rep.run, out)
    if rep.claims is not None and len(rep.claims):
        _print_claims(rep.claims, out)
    text = summary_text(rep.run, rep.leaderboard, card=rep.metric_card, equivalences=rep.equivalences, out_dir=out)
    if text:
        print(text)  # the findings: the summary's last lines
    print(f"report: {out / 'report.html'}   leaderboard: {out / 'leaderboard.csv'}")
    return 0


def _print_claims(claims: Any, out: Path) -> None:
    """The focused method's win/tie/loss per family, and how many suite claims got each verdict."""
    from .report.claims import win_tie_loss

    focus = claims[claims["group"] == "focus"]
    if len(focus):
        wtl = win_tie_loss(focus).drop(columns=["group"])
        print(f"\n--focus {focus['method'].iloc[0]}: win / tie / loss against every other method (Holm over all):")
        print(wtl.to_string(index=False))
    own = claims[claims["group"] != "focus"]
    if len(own):
        counts = ", ".join(f"{k}: {v}" for k, v in own["verdict"].value_counts().sort_index().items())
        print(f"\nclaims: {len(own)} comparison(s): {counts}")
    print(f"claims: {out / 'claims.csv'}")


def _default_methods_note(plan: Any) -> list[str]:
    """One line when some experiment names no methods (``methods = "default"``): the expensive methods it left
    out (registered with ``cost="expensive"``) and how to include them."""
    from .methods import METHODS, is_applicable
    from .models import MODELS

    left: list[str] = []
    for ep in plan.experiments:
        if ep.spec is None or ep.spec.methods != "default":
            continue
        family = MODELS.entry(ep.model).meta.get("family")
        for m in METHODS.list():
            if METHODS.entry(m).meta.get("cost") == "expensive" and is_applicable(m, family) and m not in left:
                left.append(m)
    if not left:
        return []
    return [
        f"cambench: the suite names no methods: every applicable method runs except the expensive ones, left out: "
        f"{', '.join(left)} (forwards per image grow with the layer's channels). Include them with "
        f'`methods = "all"` or by naming them, e.g. `methods = ["gradcam", "{left[0]}"]` (`list methods` shows each '
        "method's cost)."
    ]


def _small_n_warnings(plan: Any) -> list[str]:
    """One warning per experiment whose ``n`` is below the smallest at which the exact Wilcoxon-Holm test over
    its method pairs can separate any pair (:func:`benchmark.report.findings.min_n_to_separate`)."""
    from .methods import METHODS
    from .report.findings import min_n_to_separate

    out = []
    for ep in plan.experiments:
        k = sum(1 for m in ep.methods if METHODS.entry(m).meta.get("family") != "baseline")
        need = min_n_to_separate(k)
        if ep.n_images < need:
            out.append(
                f"cambench: warning: {ep.label} on {ep.dataset} has n = {ep.n_images} images for {k} methods: "
                f"below {need}, no pair of methods can differ significantly (exact Wilcoxon-Holm over "
                f"{k * (k - 1) // 2} pairs); its metrics will say 'cannot separate methods'. Raise n."
            )
    return out


def _print_notes(run: dict, out: Path) -> None:
    """What the tables leave out, from ``run.json``: unreadable items (each once) and other finished units."""
    unreadable = run.get("unreadable", [])
    if unreadable:
        print(
            f"{len(unreadable)} image(s)/annotation(s) could not be read and were left out "
            f"(also in {out / 'failures.csv'} and run.json):"
        )
        for u in unreadable:
            print(f"  {u['model']}/{u['dataset']}: {u['reason']}")
    unreported = run.get("unreported_units", [])
    if unreported:
        print(
            f"{len(unreported)} finished unit(s) in {out / 'parts'} lie outside this run (another --limit, "
            "n or setting) and are not in these tables; rerun with that setting to report them."
        )


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "suites":
        for name, where in list_suites().items():
            try:
                desc = load_suite(name).description
            except CambenchError as exc:
                desc = f"(invalid: {exc})"
            print(f"{name:<18} {desc}  [{where}]")
        return 0
    from .runner import load_registries

    load_registries(_plugins(args))
    reg: Registry[Any]
    fields: tuple[str, ...]
    if args.what == "methods":
        from .methods import METHODS as reg

        fields = ("family", "cost", "paper")
    elif args.what == "metrics":
        from .metrics import METRICS as reg

        fields = ("family", "higher_is_better", "needs")
    elif args.what == "models":
        from .models import MODELS as reg

        fields = ()
    else:
        from .data import DATASETS as reg

        fields = ("has_masks", "has_boxes", "default_model")
    if not len(reg):
        print(f"(no {args.what} registered)")
    rows = []
    for n in reg.list(prefixed=True):  # registered names, then the prefixes' (quantus/, pgc/, ...)
        try:
            e = reg.entry(n)
        except CambenchError as exc:  # e.g. an optional library that is not installed
            rows.append((n, {"status": "status=unavailable", "reason": f"reason={exc}"}))
            continue
        items = [(f, e.meta[f]) for f in (*fields, "status", "reason") if f in e.meta]
        if not fields:
            items = [(k, v) for k, v in e.meta.items() if isinstance(v, (str, int, float, bool))]
        cells = {k: f"{k}={_word(v)}" for k, v in items if _word(v) != ""}  # an empty paper= says nothing
        if args.what == "datasets":
            cells.pop("layout", None)
            cells["args"] = f"args: {_signature(e.obj)}"
        if args.what == "methods":
            defaults = getattr(e, "defaults", None) or {}
            cells["params"] = "params: " + (", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "(none)")
        rows.append((e.name, cells))
    lines = _table(rows).splitlines()
    if args.what == "datasets":  # the folder layout a loader of real data expects, under its row
        layout = {n: reg.entry(n).meta.get("layout") for n, _ in rows if n in reg}
        lines = [
            x + (f"\n    layout: {layout[n]}" if layout.get(n) else "") for (n, _), x in zip(rows, lines, strict=True)
        ]
    print("\n".join(lines))
    return 0


def _table(rows: list[tuple[str, dict[str, str]]]) -> str:
    """Rows of ``name  key=value ...`` with every column aligned (a missing cell is blank)."""
    cols: list[str] = []
    for _, cells in rows:
        cols += [k for k in cells if k not in cols]
    width = {k: max((len(c.get(k, "")) for _, c in rows), default=0) for k in cols}
    name_w = max((len(n) for n, _ in rows), default=0)
    lines = []
    for name, cells in rows:
        parts = [name.ljust(name_w)] + [cells.get(k, "").ljust(width[k]) for k in cols]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _word(value: object) -> str:
    """A metadata value as words: ``("saliency", "masks")`` -> ``saliency,masks``; empty stays empty."""
    if isinstance(value, (tuple, list, set, frozenset)):
        return ",".join(str(v) for v in value)
    return str(value)


def _signature(fn: object) -> str:
    """The keyword arguments of a factory as a suite would write them: ``root, n=None, target='predicted'``."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(unknown)"
    out = []
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            out.append(f"**{p.name}")
        elif p.kind is not p.VAR_POSITIONAL:
            out.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(out) or "(none)"


def cmd_report(args: argparse.Namespace) -> int:
    from .report.build import read_run, summary_text, write_report

    read_run(args.dir)  # a directory without a run says so first
    check_out_dir(args.dir, flag="report", create=False)
    with RunLock(args.dir):  # not while a run writes into it
        # a results folder is data: only plugins the user names here are imported, never run.json's
        rep = write_report(args.dir, plots=not args.no_plots, plugins=_plugins(args), partial=args.partial)
    if rep.incomplete:
        print(f"warning: {rep.incomplete} (see {Path(args.dir) / 'incomplete.txt'})", file=sys.stderr)
    _print_notes(rep.run, Path(args.dir))
    text = summary_text(
        rep.run, rep.leaderboard, card=rep.metric_card, equivalences=rep.equivalences, out_dir=Path(args.dir)
    )
    if text:
        print(text)
    print(f"report: {Path(args.dir) / 'report.html'}")
    return 0


#: Every model whose weights ship with cambench, and the module whose ``train_and_ship`` retrains it.
SHIPPED_MODELS = {
    "shapes_cnn": "synthetic",
    "shapes_deep_cnn": "synthetic",
    "shapes_shortcut_cnn": "synthetic",
    "shapes_multilabel_cnn": "multilabel",
    "volume_cnn": "volumetric",
    "shapes_captioner": "captioner",
    "shapes_dual_encoder": "dual_encoder",
    "shapes_vit": "vit",
    # BAM's heads on efficientnet_lite0 (one training writes both and the composites' kept list)
    "composites_object_head": "bam",
    "composites_scene_head": "bam",
}


def cmd_train_models(args: argparse.Namespace) -> int:
    import importlib

    from .models.shipped import shipped_meta

    names = list(args.names) or list(SHIPPED_MODELS)
    unknown = [n for n in names if n not in SHIPPED_MODELS]
    if unknown:
        print(
            f"error: unknown model(s) {unknown}; models with shipped weights: {', '.join(SHIPPED_MODELS)}.",
            file=sys.stderr,
        )
        return 2
    records: dict[str, dict] = {}
    try:
        # a bar per model on a terminal, else one line per epoch with elapsed time and ETA; messages above it
        with Progress():
            for name in names:
                mod = importlib.import_module(f".models.{SHIPPED_MODELS[name]}", __package__)
                if SHIPPED_MODELS[name] == "synthetic":
                    records.update(mod.train_and_ship([name]))
                elif name not in records:
                    mod.train_and_ship()
                    records.update({n: shipped_meta(n) for n, m in SHIPPED_MODELS.items() if m == SHIPPED_MODELS[name]})
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, rec in records.items():
        acc = {k: v for k, v in rec.items() if "accuracy" in k or k in ("exact_match",)}
        print(f"{name}: {acc}, sha256 {rec.get('sha256', '')[:12]}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report.compare import compare_paths, format_comparison, gate_failures

    table = compare_paths(args.dir, args.baseline, tolerance=args.tolerance, gate_cost=args.gate_cost)
    strict = bool(args.require_baseline_rows)
    print(format_comparison(table, show_ok=args.all, require_baseline_rows=strict))
    return 1 if len(gate_failures(table, require_baseline_rows=strict)) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 regression found by compare, 2 usage/input error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:  # no command: run the quick suite (global options such as --plugin kept)
        args = parser.parse_args([*argv, "run"])
    try:
        _select_cpu_kernels(args.cpu_kernels, compile=bool(getattr(args, "compile", False)))  # before torch loads
    except ValueError as exc:
        print(f"error: {exc} (from --cpu-kernels or CAMBENCH_CPU_KERNELS)", file=sys.stderr)
        return 2
    handlers = {
        "run": cmd_run,
        "list": cmd_list,
        "report": cmd_report,
        "compare": cmd_compare,
        "train-models": cmd_train_models,
    }
    previous = _terminate_as_interrupt()
    try:
        return handlers[args.command](args)
    except (CambenchError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head` closed the pipe: stop quietly, as cat and grep do
        _silence_stdout()
        return 141
    except OSError as exc:  # disk full, read-only... while writing the report's tables or plots
        if exc.errno not in WRITE_ERRNOS:
            raise
        print(f"error: {write_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished units are kept; rerun the same command to resume.", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt() -> Any:
    """Make SIGTERM (``kill PID``, a batch scheduler's stop) end the command as Ctrl-C does: the run stops,
    its worker processes are ended (:mod:`benchmark.runner.parallel`), finished units are kept. Returns the
    previous handler (None outside the main thread, where handlers cannot be set)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush raises no second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
