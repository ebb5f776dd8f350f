"""Command line: ``itop train | eval | export | sweep | report | list`` (also ``python -m itop``).

The only place that parses arguments: each subcommand turns its flags (for ``train``, a YAML
config plus ``--key value`` overrides) into library objects and calls the library. Errors caused
by input or by the file system (a full disk, a path that is a file) are printed as one line
(``itop: error: ...``), never a traceback. Under ``torchrun`` only rank 0 prints.

Exit status (:data:`EXIT_CODES`): 0 done; 1 a sweep run failed (or an unexpected crash, with
its traceback); 2 an ``itop: error:`` line; 130 stopped by SIGINT, 143 by SIGTERM (``itop
train`` first writes a checkpoint of the step it was in: continue with ``--resume auto``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from .errors import ConfigError, Interrupted, ItopError

#: What each exit status of ``itop`` means (also in the README).
EXIT_CODES = {
    0: "done",
    1: "a sweep run failed, or an unexpected crash (with its traceback)",
    2: "an itop: error: line (bad input, a damaged checkpoint, a file-system error, a NaN loss)",
    128 + signal.SIGINT: "stopped by SIGINT (Ctrl-C); a checkpoint of the current step was written",
    128 + signal.SIGTERM: "stopped by SIGTERM (SLURM, Kubernetes); a checkpoint of the current step was written",
}

EPILOG_TRAIN = """Any config key is also a flag: --key value (e.g. --sparsity 0.98 --update-interval 100).
Without -c the built-in demo config is the base (RigL-ITOP on scikit-learn's digits).
Keys (default): {keys}"""

EPILOG_SWEEP = """Sweep files: base config, grid (key: [values]; the product is the runs), optional
runs_extra and exclude, and scales smoke/cpu/paper (see configs/studies/ and `itop.training.sweep`).
Any other `--key value` is a config key set on every run (e.g. --data-dir /data/fashion-mnist
--device cuda). Rerunning the same command skips completed runs and resumes interrupted ones."""


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise), known before any process group."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def say(text: str = "", stream=None) -> None:
    """Print a line on rank 0 only (every rank runs the CLI under torchrun)."""
    if _rank() == 0:
        print(text, file=stream or sys.stdout, flush=True)


def _progress(mode: str):
    """The progress display of ``itop train`` on rank 0 (a bar on stderr when it is an
    interactive terminal outside CI, else plain lines on stdout; see itop.training.progress)."""
    from .training.progress import make_progress

    if _rank() != 0:
        return None
    interactive = sys.stderr.isatty() and not os.environ.get("CI")
    return make_progress(mode, bar_stream=sys.stderr, line_stream=sys.stdout, interactive=interactive)


# -- train / eval / list ---------------------------------------------------------------------------


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM raises :class:`Interrupted` (as SIGINT raises KeyboardInterrupt) while the block runs;
    ``Trainer.fit`` refines both into a checkpoint at the current step while it trains."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    """Exit status: 0 done, 2 on an error line, 130/143 when stopped by SIGINT/SIGTERM."""
    from .training import load_config, run_training
    from .training.config import parse_overrides

    cfg = load_config(args.config, parse_overrides(extra))
    source = "built-in demo config" if args.config is None else args.config
    say(f"# itop train: {cfg.run_name()}  ({source}); resolved config:")
    say(yaml.safe_dump(cfg.resolved(), sort_keys=False).rstrip())
    run_dir = f"{cfg.out_dir}/{cfg.run_name()}"
    progress = _progress(cfg.progress)
    try:
        with _sigterm_interrupts():
            summary = run_training(cfg, on_step=progress)
    except Interrupted as e:
        where = (f"at step {e.step}; checkpoint {e.checkpoint} holds it" if e.checkpoint
                 else f"outside training (while setting up or between rounds); results so far are under {run_dir}")
        say(f"itop: interrupted by {e.signal_name} {where}: continue with the same command plus "
            f"--resume auto (exit status {e.exit_code})", sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        say(f"itop: interrupted by SIGINT; the checkpoints written so far are kept under {run_dir}: "
            "continue with the same command plus --resume auto", sys.stderr)
        return 130
    finally:
        if progress is not None:
            progress.close()
    say()
    sel, fin = summary["test_acc_selected"], summary["final_test_acc"]
    what = "test next-token accuracy" if summary.get("task") == "language-model" else "test accuracy"
    say(f"{what}: {sel:.4f} (model selected at epoch {summary['selected_epoch']} by "
        f"validation accuracy), {fin:.4f} (last epoch)" if sel is not None else f"{what}: n/a")
    if summary.get("final_test_perplexity") is not None:
        say(f"test perplexity: {_num(summary.get('test_perplexity_selected'))} (selected), "
            f"{_num(summary['final_test_perplexity'])} (last epoch); bits per token: "
            f"{_num(summary.get('test_bits_per_token_selected'))}, {_num(summary.get('final_test_bits_per_token'))}")
    say(f"sparsity: {summary['sparsity']:.4f}   ITOP rate R_s: {summary['itop_rate']:.4f}   "
        f"reliable R_s: {summary['reliable_itop_rate']:.4f}   updates: {summary['updates']}")
    tf, inf = summary.get("training_flops_relative"), summary.get("inference_flops_relative")
    if tf is not None:
        say(f"FLOPs (x dense): training {tf:.3f}, inference {inf:.3f}")
    for r in summary.get("round_summaries", []):
        say(f"  round {r['round']}: sparsity {r['sparsity']:.4f}  test {r['test_acc_selected']:.4f}")
    say(f"wall time: {summary['wall_time_s']:.1f}s   outputs: {summary['run_dir']}/ "
        "(config.yaml, metrics.jsonl, summary.json, best.pt, checkpoints/)")
    return 0


def cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    from .training import evaluate_checkpoint

    if extra:
        raise ConfigError(f"itop eval takes a checkpoint and --data-dir/--data-file/--device; unexpected "
                          f"{' '.join(extra)}")
    result = evaluate_checkpoint(args.checkpoint, data_dir=args.data_dir, device=args.device,
                                 data_file=args.data_file)
    if args.json:
        say(json.dumps(result))
    else:
        for k, v in result.items():
            say(f"{k:28s} {v:.6g}" if isinstance(v, float) else f"{k:28s} {v}")
    return 0


def cmd_export(args: argparse.Namespace, extra: list[str]) -> int:
    from .training.export import export_checkpoint

    if extra:
        raise ConfigError(f"itop export takes a checkpoint, -o OUT and --data-dir; unexpected {' '.join(extra)}")
    info = export_checkpoint(args.checkpoint, args.output, data_dir=args.data_dir)
    if args.json:
        say(json.dumps(info))
        return 0
    mib = 2**20
    say(f"exported {info['layers']} sparse layers ({info['nnz']} of {info['weights']} weights active) "
        f"to {info['path']}")
    say(f"file size: {info['bytes'] / mib:.2f} MiB; the model stored dense: {info['dense_bytes'] / mib:.2f} "
        f"MiB ({info['dense_bytes'] / max(info['bytes'], 1):.1f}x larger); the checkpoint "
        f"{args.checkpoint}: {info['checkpoint_bytes'] / mib:.2f} MiB")
    say(f"evaluate it with: itop eval {info['path']}")
    return 0


def cmd_list(args: argparse.Namespace, extra: list[str]) -> int:
    from .data import dataset_descriptions
    from .methods import list_methods
    from .models.registry import model_specs

    if extra:
        raise ConfigError(f"itop list takes methods, models or datasets; unexpected {' '.join(extra)}")
    what = args.what or "all"
    if what in ("all", "methods"):
        say("methods:")
        for m in list_methods():
            say(f"  {m.name:14s} {m.description}")
    if what in ("all", "models"):
        say("models:")
        for spec in model_specs():
            say(f"  {spec.name:22s} {spec.description}")
    if what in ("all", "datasets"):
        say("datasets:")
        for name, desc in sorted(dataset_descriptions().items()):
            say(f"  {name:14s} {desc}")
    return 0


# -- sweep -----------------------------------------------------------------------------------------


def cmd_sweep(args: argparse.Namespace, extra: list[str]) -> int:
    """Exit status: 0 when every run completed, 1 when a run failed, 2 on bad input, 130/143 when
    stopped by SIGINT/SIGTERM (the runs are stopped with SIGTERM and checkpoint their step)."""
    from .training.config import parse_overrides
    from .training.sweep import format_table, plan_sweep, run_sweep
    from .training.sweep.run import _cpu_count

    plan = plan_sweep(args.config, args.scale, args.out_dir, parse_overrides(extra))
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        raise ConfigError("--jobs and --threads must be positive integers")
    threads = args.threads or (plan.runs[0].config.get("threads") if plan.runs else None) \
        or max(1, _cpu_count() // args.jobs)
    sizes = " x ".join(f"{len(set(map(repr, plan.grid[k])))} {k}" for k in plan.grid if len(plan.grid[k]) > 1)
    say(f"itop sweep: {plan.name} at scale {plan.scale}: {len(plan.runs)} runs into {plan.out_dir}/")
    if plan.description:
        say(f"  {' '.join(plan.description.split())}")
    say(f"  varying: {', '.join(plan.varying) or 'nothing'}" + (f"   (grid {sizes})" if sizes else ""))
    if plan.excluded or plan.duplicates:
        say(f"  {plan.excluded} excluded, {plan.duplicates} duplicate configs run once")
    say(f"  {args.jobs} job(s) x {threads} thread(s) each")
    try:
        with _sigterm_interrupts() if not args.dry_run else contextlib.nullcontext():
            results = run_sweep(plan, jobs=args.jobs, threads=args.threads, dry_run=args.dry_run, progress=say)
    except KeyboardInterrupt as e:
        say("itop: sweep interrupted; run the same command again to continue (completed runs "
            "are skipped, interrupted ones resume from their last checkpoint)", sys.stderr)
        return e.exit_code if isinstance(e, Interrupted) else 130
    if args.dry_run:
        for r in results:
            say(f"  {r.status:8s} {r.run_dir}")
        return 1 if any(r.status == "failed" for r in results) else 0
    say()
    say(format_table(results))
    failed = [r for r in results if r.status == "failed"]
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    say(f"\n{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; results in {plan.out_dir}/")
    for r in failed:
        say(f"failed: {r.name}: {r.error}" + (f" (log: {r.log})" if r.log else ""))
    return 1 if failed else 0


# -- report ----------------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace, extra: list[str]) -> int:
    from .report import write_report

    if extra:
        raise ConfigError(f"itop report: unexpected {' '.join(extra)} (see itop report -h)")
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    _check_output_folder(args.out, "--out")
    path = write_report(args.paths, args.out, title=args.title, fmt=args.format, by=by,
                        include_rounds=args.include_rounds)
    say(f"report written to {path}")
    return 0


def _check_output_folder(path: str, flag: str) -> None:
    """An output folder must be a folder or creatable as one (checked before any work)."""
    from pathlib import Path

    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == Path(path) else f"cannot be created: {probe} is a file"
        raise ConfigError(f"{flag} {path} {what}, not a folder; give a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path} cannot be written ({probe} is not writable); give another folder")


def _os_error(e: OSError) -> str:
    """One line for a file-system error that reached the command line."""
    where = f" {e.filename}" if e.filename else ""
    return f"cannot use{where}: {e.strerror or e}; check the path, the free disk space and the permissions"


# -- the parser ------------------------------------------------------------------------------------


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config file (flat key: value mapping)")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--data-file", default=None, help="the text file of a text-dataset run, if it moved")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON line")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="RUN/best.pt or RUN/checkpoints/ckpt-*.pt")
    p.add_argument("-o", "--output", required=True, help="output file (never overwritten)")
    p.add_argument("--data-dir", default=None, help="the run's dataset (its files give the input shape)")
    p.add_argument("--json", action="store_true", help="print one JSON line")


def _sweep_args(p: argparse.ArgumentParser) -> None:
    from .training.sweep import SCALES

    p.add_argument("-c", "--config", required=True, help="sweep YAML file, e.g. configs/studies/itop-rate.yaml")
    p.add_argument("--scale", default="cpu", choices=SCALES, help="which scale of the study to run (default cpu)")
    p.add_argument("--out-dir", default=None, help="root output folder (default: the file's out_dir, else runs)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores // jobs)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and exit")


def _report_args(p: argparse.ArgumentParser) -> None:
    from .report import GROUP_KEYS

    p.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run folders, or folders searched recursively for runs")
    p.add_argument("--out", default="report", help="output folder (default: ./report)")
    p.add_argument("--title", default=None, help="report title (default: itop report)")
    p.add_argument("--format", choices=["md", "html"], default="md",
                   help="md: report.md next to the PNGs; html: one self-contained report.html")
    p.add_argument("--by", default=None, help="comma-separated grouping keys (default: method plus the keys "
                   f"among {', '.join(GROUP_KEYS)} that vary)")
    p.add_argument("--include-rounds", action="store_true",
                   help="also list the round-K runs of iterative magnitude pruning")


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", choices=["methods", "models", "datasets"])


def _train_epilog() -> str:
    from .training.config import KEYS

    return EPILOG_TRAIN.format(keys=", ".join(f"{k} ({spec.default})" for k, spec in KEYS.items()))


# name -> (help, add its arguments, run it, description/epilog builder)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace, list[str]], int], dict[str, Any]]] = {
    "train": ("train a model", _train_args, cmd_train, {"epilog": _train_epilog}),
    "eval": ("evaluate a checkpoint (best.pt, checkpoints/ckpt-*.pt or an itop export file)",
             _eval_args, cmd_eval, {}),
    "export": ("write a run's model with its sparse layers compressed (CSR), for inference",
               _export_args, cmd_export, {}),
    "sweep": ("run a grid of trainings from a sweep file", _sweep_args, cmd_sweep,
              {"description": "Run a study: a grid of trainings from one sweep file.",
               "epilog": lambda: EPILOG_SWEEP}),
    "report": ("tables and plots from run folders", _report_args, cmd_report,
               {"description": "Tables (mean ± std over seeds) and plots (accuracy vs R_s, R_s over "
                "steps, accuracy vs sparsity, per-layer density/R_s, lifetimes, reliable R_s) over run "
                "folders written by itop train."}),
    "list": ("list methods, models and datasets", _list_args, cmd_list, {}),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="itop", description="Dynamic sparse training with "
                                     "In-Time Over-Parameterization tracking.")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, run, extra) in COMMANDS.items():
        kwargs = {k: v() if callable(v) else v for k, v in extra.items()}
        p = sub.add_parser(name, help=help_text, allow_abbrev=False,
                           formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        add_args(p)
        p.set_defaults(func=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # train and sweep take config keys as extra flags
    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    logging.basicConfig(level=level if _rank() == 0 else max(level, logging.WARNING),
                        format="%(message)s", stream=sys.stdout)
    try:
        return args.func(args, extra)
    except ItopError as e:
        say(f"itop: error: {e}", sys.stderr)
        return 2
    except OSError as e:  # a full disk, a path that is a file, a folder that is not writable
        say(f"itop: error: {_os_error(e)}", sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
