"""Human-readable validation reports: Markdown (:func:`render_report`) and a standalone HTML page (:func:`render_html`).

Both take ``(section name, ValidationOutcome)`` pairs and return a string; the caller writes it (local
disk, S3, a Prefect markdown artifact). Each section lists its failure and warning lines, then one table
row per expectation, failed ones first. The output depends only on the outcomes (no clock, no paths), so
reruns on the same data give byte-identical reports.

A batch report has one section per suite that ran: the manifest's, then each collection's ``images`` and
``output`` suites in their compact form (``ValidationOutcome.compact``: no per-expectation table; a passing
one appears only in the summary table), and the batch's summary rows, whose failures also make the result
FAILED.

Every text that goes into a report passes through :func:`errors.scrub` (before any escaping): no URL
credentials, signed queries or registered secrets reach it.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from errors import scrub

from .suites import ValidationOutcome

Sections = Sequence[tuple[str, ValidationOutcome]]
Rows = Sequence[Mapping]  # a batch's summary rows: collection_id, status, reason
_RANK = {"FAILED": 0, "WARNING": 1, "passed": 2}


def _status(entry: dict) -> str:
    if entry["success"]:
        return "passed"
    return "FAILED" if entry.get("severity", "critical") == "critical" else "WARNING"


def _value(value) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k}={_value(v)}" for k, v in value.items()) + ")"
    if isinstance(value, list):
        return "(" + ", ".join(_value(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value) if isinstance(value, str) else str(value)


def _unexpected(entry: dict) -> str:
    """``'001.png': -1, '004.png': inf (5 in all)``: the offending rows and their values."""
    values, rows = entry.get("unexpected") or [], entry.get("rows") or []
    if rows and len(rows) == len(values):
        # a row named by the offending value itself (a bad collection id) is not repeated
        listed = [row if row.endswith(_value(v)) else f"{row}: {_value(v)}" for row, v in zip(rows, values)]
    else:
        listed = [_value(v) for v in values] or list(rows)
    count = entry.get("unexpected_count") or 0
    more = f" ({count} in all)" if count > len(listed) else ""
    return ", ".join(listed) + more


def _observed(entry: dict) -> str:
    if entry.get("exception"):
        return f"not checked: {entry['exception']}"
    observed = entry.get("observed")
    return "" if observed is None else (observed if isinstance(observed, str) else _value(observed))


def _rows(outcome: ValidationOutcome) -> list[tuple[str, str, str, str, str]]:
    """(result, expectation, column, observed, unexpected) per expectation, failed first, else in suite order."""
    ranked = sorted(enumerate(outcome.results), key=lambda ie: (_RANK[_status(ie[1])], ie[0]))
    return [(_status(e), e["expectation"], e.get("column") or "(table)", _observed(e), _unexpected(e))
            for _, e in ranked]


def _totals(sections: Sections, collections: Rows | None = None) -> tuple[str, str]:
    """The overall result (FAILED when any validation or any collection failed) and the counts behind it."""
    passed = sum(o.success for _, o in sections)
    failures = sum(len(o.failures) for _, o in sections)
    warnings = sum(len(o.warnings) for _, o in sections)
    failed_rows = sum(r.get("status") == "failed" for r in collections or ())
    overall = "PASSED" if passed == len(sections) and not failed_rows else "FAILED"
    totals = f"{passed} of {len(sections)} validations passed; {failures} failure(s), {warnings} warning(s)"
    if collections is not None:
        totals += f"; {failed_rows} of {len(collections)} collection(s) failed"
    return overall, totals


def _label(name: str, o: ValidationOutcome) -> str:
    """A section's heading: its name, plus the suite when the name does not say it (``c2 images``)."""
    return name if o.suite in name.split() else f"{name} {o.suite}"


def _detailed(o: ValidationOutcome) -> bool:
    """Whether a section gets its own part: always with per-expectation results; a compact outcome (no results,
    see ``ValidationOutcome.compact``) only when it has failure or warning lines."""
    return bool(o.results or o.failures or o.warnings or not o.success)


def _cell(text: str) -> str:
    return scrub(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_report(sections: Sections, title: str, collections: Rows | None = None) -> str:
    """A Markdown report: the title and overall result, a summary table, then one part per section (compact
    sections that passed cleanly have none), then, given a batch's ``collections`` (summary rows), one line
    per collection. The result is FAILED when any validation failed or any collection's status is ``failed``."""
    overall, totals = _totals(sections, collections)
    out = [f"# {scrub(title)}", "", f"**Result: {overall}** ({totals})", ""]
    if sections:
        out += ["| section | suite | result | expectations | failed | warnings |", "|---|---|---|---|---|---|"]
        for name, o in sections:
            stats = o.statistics
            out.append(f"| {_cell(name)} | {o.suite} | {'passed' if o.success else 'FAILED'} | "
                       f"{stats.get('evaluated', len(o.results))} | {len(o.failures)} | {len(o.warnings)} |")
        out.append("")
    for name, o in sections:
        if not _detailed(o):
            continue
        out += [f"## {_label(name, o)}: {'passed' if o.success else 'FAILED'}", ""]
        if o.failures:
            out += ["Failures:", ""] + [f"- {scrub(line)}" for line in o.failures] + [""]
        if o.warnings:
            out += ["Warnings:", ""] + [f"- {scrub(line)}" for line in o.warnings] + [""]
        if o.results:
            out += ["| result | expectation | column | observed | unexpected |", "|---|---|---|---|---|"]
            out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in _rows(o)]
            out.append("")
    if collections is not None:
        out += ["## Collections", "", "| collection_id | status | reason |", "|---|---|---|"]
        out += [f"| {_cell(str(r.get('collection_id') or ''))} | {r.get('status', '')} | "
                f"{_cell(str(r.get('reason') or ''))} |" for r in collections]
        out.append("")
    return scrub("\n".join(out))


def render_html(sections: Sections, title: str, collections: Rows | None = None) -> str:
    """The same report as a standalone HTML page (no scripts, no external resources)."""
    def e(text: str) -> str:
        return html.escape(scrub(text))

    overall, totals = _totals(sections, collections)
    out = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
           "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}"
           ".FAILED{color:#b00020;font-weight:bold}.WARNING{color:#a05a00}.passed{color:#2e7d32}</style>",
           "</head><body>", f"<h1>{e(title)}</h1>",
           f'<p>Result: <span class="{"passed" if overall == "PASSED" else "FAILED"}">{overall}</span> '
           f"({e(totals)})</p>"]
    for name, o in sections:
        if not _detailed(o):
            continue
        result = "passed" if o.success else "FAILED"
        out.append(f'<h2>{e(_label(name, o))}: <span class="{result}">{result}</span></h2>')
        for label, lines in (("Failures", o.failures), ("Warnings", o.warnings)):
            if lines:
                out.append(f"<p>{label}:</p><ul>" + "".join(f"<li>{e(line)}</li>" for line in lines) + "</ul>")
        if o.results:
            out.append("<table><tr><th>result</th><th>expectation</th><th>column</th><th>observed</th>"
                       "<th>unexpected</th></tr>")
            for status, *cells in _rows(o):
                out.append(f'<tr><td class="{status}">{status}</td>' + "".join(f"<td>{e(c)}</td>" for c in cells)
                           + "</tr>")
            out.append("</table>")
    if collections is not None:
        out.append("<h2>Collections</h2><table><tr><th>collection_id</th><th>status</th><th>reason</th></tr>")
        for r in collections:
            status = str(r.get("status", ""))
            css = ' class="FAILED"' if status == "failed" else ""
            out.append(f"<tr><td>{e(str(r.get('collection_id') or ''))}</td><td{css}>{e(status)}</td>"
                       f"<td>{e(str(r.get('reason') or ''))}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return scrub("\n".join(out))


__all__ = ["render_report", "render_html"]
