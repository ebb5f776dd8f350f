"""Rendering a report: tables, plots and CSVs into ``report.md`` or a self-contained ``report.html``.

The last step of a report (read -> aggregate -> plot -> render); :func:`write_report` runs all
four.
"""

from __future__ import annotations

import base64
import csv
import html
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .aggregate import (
    _MISSING,
    _TABLE_KEY_LABELS,
    METRIC_LABELS,
    METRICS,
    Group,
    _fmt_duration,
    _fmt_metric,
    _fmt_stat,
    _fmt_value,
    aggregate,
)
from .plots import PLOTS, SkipPlot, _PlotSpec
from .read import Run, _finite, collect

__all__ = ["write_report"]

log = logging.getLogger(__name__)

# A report is a list of blocks rendered to Markdown or HTML:
# ("h1"|"h2"|"h3"|"p"|"note", text), ("list", [text]), ("table", headers, rows),
# ("img", filename, alt, caption).
Block = tuple


def _group_table(groups: Sequence[Group], keys: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    headers = [_TABLE_KEY_LABELS.get(k, k) for k in keys] + ["n"] + [METRIC_LABELS.get(m, m) for m in METRICS]
    rows = []
    for g in groups:
        n = f"{g.n}" + (f" ({g.incomplete} incomplete)" if g.incomplete else "")
        rows.append([_fmt_value(k, g.key.get(k)) for k in keys] + [n]
                    + [_fmt_stat(m, g.stats[m], g.n) for m in METRICS])
    return headers, rows


_RUN_COLUMNS = ("method", "model", "dataset", "target_sparsity", "update_interval", "batch_size",
                "multiplier", "seed")
_RUN_METRICS = ("test_acc_selected", "final_test_acc", "itop_rate", "reliable_itop_rate", "sparsity",
                "training_flops_relative", "wall_time_s")


def _run_table(runs: Sequence[Run], out_dir: Path) -> tuple[list[str], list[list[str]]]:
    headers = (["run"] + [_TABLE_KEY_LABELS.get(k, k) for k in _RUN_COLUMNS] + ["steps", "completed"]
               + [METRIC_LABELS[m] for m in _RUN_METRICS] + ["folder"])
    rows = []
    for r in runs:
        done = "yes" if r.completed else f"NO: {r.note}" if r.note else "NO"
        rows.append([r.name] + [_fmt_value(k, r.get(k)) for k in _RUN_COLUMNS]
                    + [_fmt_value("steps", r.get("steps")), done]
                    + [_fmt_metric(m, r.get(m)) for m in _RUN_METRICS] + [_rel(r.path, out_dir)])
    return headers, rows


def _rel(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive on Windows
        return str(path)


def _imp_blocks(runs: Sequence[Run]) -> list[Block]:
    blocks: list[Block] = []
    for r in runs:
        rounds = r.summary.get("round_summaries")
        if not isinstance(rounds, list) or not rounds:
            continue
        rows = [[_fmt_value("round", rs.get("round")), _fmt_metric("sparsity", rs.get("sparsity")),
                 _fmt_metric("test_acc_selected", rs.get("test_acc_selected")),
                 _fmt_metric("final_test_acc", rs.get("final_test_acc"))]
                for rs in rounds if isinstance(rs, dict)]
        blocks.append(("h3", f"IMP rounds of {r.name}"))
        blocks.append(("table", ["round", "sparsity", METRIC_LABELS["test_acc_selected"],
                                 METRIC_LABELS["final_test_acc"]], rows))
    return blocks


def _header_lines(runs: Sequence[Run], groups: Sequence[Group], sources: Sequence[str]) -> list[str]:
    def values(key: str) -> str:
        seen = sorted({str(r.get(key)) for r in runs if r.get(key) is not None})
        return ", ".join(seen) if seen else _MISSING

    incomplete = [r for r in runs if not r.completed]
    wall = sum(r.metric("wall_time_s") for r in runs if _finite(r.get("wall_time_s")))
    seeds = sorted({str(r.seed) for r in runs if r.seed is not None})
    lines = [
        f"{len(runs)} runs in {len(groups)} groups"
        + (f", {len(incomplete)} incomplete (flagged in the run table)" if incomplete else ", all complete"),
        f"datasets: {values('dataset')}; models: {values('model')}; methods: {values('method')}",
        f"seeds: {', '.join(seeds) if seeds else _MISSING}; total training wall time: {_fmt_duration(wall)}",
        f"read from: {', '.join(sources)}",
        "tables show mean ± sample std over the runs of a group (n runs; a cell's own n is given "
        "when some runs lack that value); accuracies in %",
    ]
    return lines


def _build_blocks(runs: Sequence[Run], groups: Sequence[Group], keys: Sequence[str], title: str,
                  sources: Sequence[str], plots: list[tuple[_PlotSpec, Path | None, str]],
                  out_dir: Path) -> list[Block]:
    blocks: list[Block] = [("h1", title), ("p", "What is in this report:"),
                           ("list", _header_lines(runs, groups, sources))]
    blocks.append(("h2", "Results by group"))
    blocks.append(("table", *_group_table(groups, keys)))
    blocks.append(("h2", "Plots"))
    skipped = []
    for i, (spec, made, reason) in enumerate(plots, 1):
        if made is None:
            skipped.append(f"{i}. {spec.title}: {reason}")
            continue
        blocks.append(("h3", f"{i}. {spec.title}"))
        blocks.append(("img", made.name, spec.title, spec.caption))
    if skipped:
        blocks.append(("p", "Plots skipped:"))
        blocks.append(("list", skipped))
    blocks.append(("h2", "Runs"))
    blocks.append(("table", *_run_table(runs, out_dir)))
    blocks.extend(_imp_blocks(runs))
    return blocks


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows])


# Block kind -> Markdown of its fields.
_MD: dict[str, Callable[..., str]] = {
    "h1": lambda text: f"# {text}",
    "h2": lambda text: f"## {text}",
    "h3": lambda text: f"### {text}",
    "p": lambda text: text,
    "list": lambda items: "\n".join(f"- {item}" for item in items),
    "table": _md_table,
    "img": lambda file, alt, caption: f"![{alt}]({file})\n\n{caption}",
}


def _render_md(blocks: Sequence[Block]) -> str:
    return "\n\n".join(_MD[b[0]](*b[1:]) for b in blocks) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:0.85em}
th,td{border:1px solid #ccc;padding:0.3em 0.6em;text-align:left}th{background:#f2f2f2}
tr:nth-child(even) td{background:#fafafa}img{max-width:100%;height:auto;border:1px solid #eee}
figure{margin:1em 0}figcaption{color:#555;font-size:0.9em}.wide{overflow-x:auto}"""


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _html_img(out_dir: Path, file: str, alt: str, caption: str) -> str:
    data = base64.b64encode((out_dir / file).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


# Block kind -> HTML of the report folder and its fields (plots are embedded as base64).
_HTML: dict[str, Callable[..., str]] = {
    "h1": lambda out_dir, text: f"<h1>{html.escape(text)}</h1>",
    "h2": lambda out_dir, text: f"<h2>{html.escape(text)}</h2>",
    "h3": lambda out_dir, text: f"<h3>{html.escape(text)}</h3>",
    "p": lambda out_dir, text: f"<p>{html.escape(text)}</p>",
    "list": lambda out_dir, items: "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>",
    "table": lambda out_dir, headers, rows: _html_table(headers, rows),
    "img": _html_img,
}


def _render_html(blocks: Sequence[Block], out_dir: Path) -> str:
    title = next((b[1] for b in blocks if b[0] == "h1"), "itop report")
    body = [_HTML[b[0]](out_dir, *b[1:]) for b in blocks]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _write_csv(path: Path, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(headers)
        w.writerows(rows)


def _csv_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return v


def _write_csvs(runs: Sequence[Run], groups: Sequence[Group], keys: Sequence[str], out_dir: Path) -> None:
    headers = list(keys) + ["n", "incomplete"]
    for m in METRICS:
        headers += [f"{m}_mean", f"{m}_std", f"{m}_n"]
    rows = []
    for g in groups:
        row = [_csv_value(g.key.get(k)) for k in keys] + [g.n, g.incomplete]
        for m in METRICS:
            s = g.stats[m]
            row += [_csv_value(s.mean), _csv_value(s.std), s.n]
        rows.append(row)
    _write_csv(out_dir / "groups.csv", headers, rows)
    # The path is relative to the report folder, as in report.md, so a report can be moved or
    # committed together with its runs.
    cols = ["run"] + list(_RUN_COLUMNS) + ["steps", "completed"] + list(METRICS) + ["path"]
    _write_csv(out_dir / "runs.csv", cols,
               ([r.name] + [_csv_value(r.get(k)) for k in _RUN_COLUMNS]
                + [_csv_value(r.get("steps")), r.completed]
                + [_csv_value(r.get(m)) for m in METRICS] + [_rel(r.path, out_dir)] for r in runs))


def write_report(paths: Iterable[str | os.PathLike | Run], out_dir: str | os.PathLike,
                 title: str | None = None, fmt: str = "md", by: Sequence[str] | None = None,
                 include_rounds: bool = False) -> Path:
    """Write a report over the runs under ``paths``: plots, tables and one report file.

    Writes into ``out_dir``: the PNG of each plot in :data:`PLOTS` the runs support,
    ``groups.csv`` and ``runs.csv``, and ``report.md`` (``fmt="md"``; plots linked by relative
    path) or a self-contained ``report.html`` (``fmt="html"``; plots embedded as base64).

    Args:
        paths: Run folders or parent folders (see :func:`collect`), or :class:`Run` objects.
        out_dir: Output folder (created).
        title: Report title; default ``"itop report"``.
        fmt: ``"md"`` or ``"html"``.
        by: Grouping keys (see :func:`aggregate`).
        include_rounds: List the rounds of IMP runs as runs of their own.

    Returns:
        The path of ``report.md`` or ``report.html``.

    Raises:
        ConfigError: Unknown ``fmt`` or grouping key.
        DataNotFoundError: No run found under ``paths``.
    """
    if fmt not in ("md", "html"):
        raise ConfigError(f"report format '{fmt}' is not one of md, html")
    items = list(paths)
    runs = [p for p in items if isinstance(p, Run)]
    folders = [p for p in items if not isinstance(p, Run)]
    if folders or not runs:
        runs += collect(folders, include_rounds=include_rounds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = aggregate(runs, by)
    keys = list(groups[0].key) if groups else ["method"]
    plots: list[tuple[_PlotSpec, Path | None, str]] = []
    for spec in PLOTS:
        target = out / spec.filename
        try:
            made = spec.fn(runs, target, by)
        except SkipPlot as e:
            log.info("skipped %s: %s", spec.filename, e)
            if target.exists():  # stale from an earlier report over other runs
                target.unlink()
            plots.append((spec, None, str(e)))
        else:
            plots.append((spec, made, ""))
    sources = [str(p) for p in folders] or sorted({str(r.path.parent) for r in runs})
    blocks = _build_blocks(runs, groups, keys, title or "itop report", sources, plots, out)
    _write_csvs(runs, groups, keys, out)
    if fmt == "html":
        path = out / "report.html"
        path.write_text(_render_html(blocks, out), encoding="utf-8")
    else:
        path = out / "report.md"
        path.write_text(_render_md(blocks), encoding="utf-8")
    log.info("wrote %s", path)
    return path


