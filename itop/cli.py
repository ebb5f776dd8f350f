"""Command line: ``itop train``, ``itop eval``, ``itop list`` (also ``python -m itop``).

The CLI is the only place that parses arguments: it turns a YAML config plus ``--key value``
overrides into a :class:`~itop.config.RunConfig` and hands it to the library. Errors caused by
input are printed as one line (``itop: error: ...``) with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import yaml

from .errors import ItopError

EPILOG_TRAIN = """Any config key is also a flag: --key value (e.g. --sparsity 0.98 --update-interval 100).
Without -c the built-in demo config is the base (RigL-ITOP on scikit-learn's digits).
Keys (default): {keys}"""


def _progress_bar(stream):
    state = {"t": 0.0}

    def on_step(epoch: int, batch: int, steps: int) -> None:
        now = time.monotonic()
        if batch != steps and now - state["t"] < 0.2:
            return
        state["t"] = now
        width = 30
        filled = int(width * batch / max(steps, 1))
        stream.write(f"\repoch {epoch + 1} [{'#' * filled}{'.' * (width - filled)}] {batch}/{steps}")
        if batch == steps:
            stream.write("\r" + " " * (width + 40) + "\r")
        stream.flush()

    return on_step


def _use_bar(mode: str) -> bool:
    if mode == "bar":
        return True
    if mode == "auto":
        return sys.stderr.isatty() and not os.environ.get("CI")
    return False


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from .config import load_config, parse_overrides
    from .runner import run_training

    overrides = parse_overrides(extra)
    cfg = load_config(args.config, overrides)
    source = "built-in demo config" if args.config is None else args.config
    print(f"# itop train: {cfg.run_name()}  ({source}); resolved config:")
    print(yaml.safe_dump(cfg.resolved(), sort_keys=False).rstrip())
    sys.stdout.flush()
    try:
        summary = run_training(cfg, on_step=_progress_bar(sys.stderr) if _use_bar(cfg.progress) else None)
    except KeyboardInterrupt:
        print(f"itop: interrupted; checkpoints are kept under {cfg.out_dir}/{cfg.run_name()}: continue "
              "with the same command plus --resume auto", file=sys.stderr)
        return 130
    print()
    sel, fin = summary["test_acc_selected"], summary["final_test_acc"]
    print(f"test accuracy: {sel:.4f} (model selected at epoch {summary['selected_epoch']} by "
          f"validation accuracy), {fin:.4f} (last epoch)" if sel is not None else "test accuracy: n/a")
    print(f"sparsity: {summary['sparsity']:.4f}   ITOP rate R_s: {summary['itop_rate']:.4f}   "
          f"reliable R_s: {summary['reliable_itop_rate']:.4f}   updates: {summary['updates']}")
    tf, inf = summary.get("training_flops_relative"), summary.get("inference_flops_relative")
    if tf is not None:
        print(f"FLOPs (x dense): training {tf:.3f}, inference {inf:.3f}")
    if "round_summaries" in summary:
        for r in summary["round_summaries"]:
            print(f"  round {r['round']}: sparsity {r['sparsity']:.4f}  test {r['test_acc_selected']:.4f}")
    print(f"wall time: {summary['wall_time_s']:.1f}s   outputs: {summary['run_dir']}/ "
          "(config.yaml, metrics.jsonl, summary.json, best.pt, checkpoints/)")
    return 0


def cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    from .runner import evaluate_checkpoint

    if extra:
        raise ItopError(f"itop eval takes a checkpoint and --data-dir/--device; unexpected {' '.join(extra)}")
    result = evaluate_checkpoint(args.checkpoint, data_dir=args.data_dir, device=args.device)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28s} {v:.6g}" if isinstance(v, float) else f"{k:28s} {v}")
    return 0


def cmd_list(args: argparse.Namespace, extra: list[str]) -> int:
    from .data import dataset_descriptions
    from .methods import list_methods
    from .models.registry import model_specs

    what = args.what or "all"
    if what in ("all", "methods"):
        print("methods:")
        for m in list_methods():
            print(f"  {m.name:14s} {m.description}")
    if what in ("all", "models"):
        print("models:")
        for spec in model_specs():
            print(f"  {spec.name:22s} {spec.description}")
    if what in ("all", "datasets"):
        print("datasets:")
        for name, desc in sorted(dataset_descriptions().items()):
            print(f"  {name:14s} {desc}")
    return 0


def _delegate(module: str):
    """Hand a subcommand's arguments to ``itop.<module>.main`` (which parses them itself)."""

    def run(args: argparse.Namespace, extra: list[str]) -> int:
        import importlib

        return importlib.import_module(f"itop.{module}").main(list(args.args) + list(extra))

    return run


def build_parser() -> argparse.ArgumentParser:
    from .config import RunConfig

    parser = argparse.ArgumentParser(prog="itop", description="Dynamic sparse training with "
                                     "In-Time Over-Parameterization tracking.")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = RunConfig()
    keys = ", ".join(f"{k} ({getattr(defaults, k)})" for k in RunConfig.keys())
    p = sub.add_parser("train", help="train a model", epilog=EPILOG_TRAIN.format(keys=keys),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="YAML config file (flat key: value mapping)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a checkpoint (best.pt or checkpoints/ckpt-*.pt)")
    p.add_argument("checkpoint")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=cmd_eval)
    for name, help_text in (("sweep", "run a grid of trainings from a sweep file (itop sweep -h)"),
                            ("report", "tables and plots from run folders (itop report -h)")):
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(name))
    p = sub.add_parser("list", help="list methods, models and datasets")
    p.add_argument("what", nargs="?", choices=["methods", "models", "datasets"])
    p.set_defaults(func=cmd_list)
    return parser


DELEGATED = ("sweep", "report")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Subcommands with their own parser get their arguments untouched (argparse would reorder a
    # leading "-c FILE" around a REMAINDER positional).
    head = 2 if argv[:1] == ["--log-level"] else 1 if argv[:1] and argv[0].startswith("--log-level=") else 0
    if len(argv) > head and argv[head] in DELEGATED:
        args, extra = parser.parse_known_args(argv[: head + 1])
        extra = argv[head + 1 :]
    else:
        args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(message)s", stream=sys.stdout)
    try:
        return args.func(args, extra)
    except ItopError as e:
        print(f"itop: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
