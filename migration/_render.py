"""A validation report for people (a Rich summary with recommendations) and for machines (``--json``,
serialised by pydantic from the frozen report)."""

from __future__ import annotations

import json

from pydantic import TypeAdapter
from rich.console import Console
from rich.table import Table

from ._model import FindingKind, ValidationReport, ValidationVerdict

__all__ = ["EXIT_FINDINGS", "EXIT_PASS", "exit_code", "recommendations", "render", "report_json"]

EXIT_PASS = 0
EXIT_FINDINGS = 1
"""Findings: the migration is not validated. Store and transport errors keep the CLI's codes
(2 backend, 4 retriable)."""

_ADVICE: dict[FindingKind, str] = {
    FindingKind.COUNT_MISMATCH: "The sides hold different numbers of assessments: see lost and extra below.",
    FindingKind.LOST: "Assessments only legacy knows: re-import a fresh legacy export (`assessment-store "
                      "import-legacy FILE`, idempotent) and check what the bridge refused (`assessment-store bridge "
                      "dlq`, `bridge rejections`).",
    FindingKind.EXTRA: "Assessments only the store knows: written through the store while legacy did not receive "
                       "them - check that the reverse sync runs (`assessment-store bridge reverse-sync`) before any rollback.",
    FindingKind.CORRUPTED: "Fields differ: when the store's version is the older one, re-import the export with "
                           "the legacy values; in-flight assessments (still changing) may also show here - run "
                           "again on a quiet system before acting.",
    FindingKind.DUPLICATE: "Duplicates: legacy listing an id twice needs de-duplication in legacy before cut-over; "
                           "a command applied twice in the store points at a writer bypassing the processor.",
    FindingKind.ILLEGAL_HISTORY: "Histories the state machine refuses: events written around the processor; inspect "
                                 "them with `assessment-store history ID` and correct with compensating commands.",
    FindingKind.PROJECTION_MISMATCH: "The projection differs from the fold of its events: rebuild it "
                                     "(`assessment-store replay`, verified before it swaps).",
}


_BEFORE_ADVICE: dict[FindingKind, str] = {
    FindingKind.CHECKSUM_MISMATCH: "An export file differs from its manifest (edited, truncated, or copied badly): "
                                   "export again (`assessment-store migrate export --overwrite`).",
    FindingKind.COUNT_MISMATCH: "Legacy and the export hold different numbers of assessments (per status too): legacy "
                                "changed since the export - export again on a quiet system, or import and let the "
                                "after-validation and the live bridge settle the difference.",
    FindingKind.LOST: "Assessments legacy holds that the export lacks (created since the export): export again, or "
                      "rely on the live bridge for them.",
    FindingKind.EXTRA: "Assessments in the export that legacy no longer holds: find out why before importing them.",
    FindingKind.CORRUPTED: "Fields differ between legacy and the export: legacy changed them since (in-flight "
                           "assessments), or the file was edited - export again before importing.",
    FindingKind.DUPLICATE: "An id listed twice in the export: legacy needs de-duplication before the import (the "
                           "import keeps whichever line brings the store further).",
    FindingKind.INVALID_RECORD: "Lines that are not records: the import would refuse them (see `<file>.rejected.jsonl` "
                                "after `migrate import`).",
    FindingKind.ILLEGAL_AUDIT: "The legacy audit log shows transitions its state machine forbids: legacy's records "
                               "of those assessments may be wrong - check them before trusting the import.",
    FindingKind.UNKNOWN_ASSESSMENT: "Audit entries about assessments the export does not hold: deleted on legacy, or "
                                    "the export is incomplete.",
}


def recommendations(report: ValidationReport) -> list[str]:
    advice_of = _BEFORE_ADVICE if report.kind == "before" else _ADVICE
    advice = [advice_of[k] for k in FindingKind if report.totals.get(k) and k in advice_of]
    if report.verdict is ValidationVerdict.PASS and report.kind == "before":
        advice.append(f"Pass: the export matches legacy. Import it (`assessment-store migrate import "
                      f"{report.export_dir}`); run {report.run_id}.")
    elif report.verdict is ValidationVerdict.PASS:
        advice.append("Pass: legacy and the store agree. Later steps may require this run "
                      f"(run {report.run_id}, `latest_validation`).")
    elif not report.findings and report.total_findings:
        advice.append("Every finding was cut by --max-findings 0; raise it to see them.")
    return advice


def exit_code(report: ValidationReport) -> int:
    return EXIT_PASS if report.verdict is ValidationVerdict.PASS else EXIT_FINDINGS


def report_json(report: ValidationReport) -> str:
    data = TypeAdapter(ValidationReport).dump_python(report, mode="json")
    data["verdict"] = report.verdict.value
    data["total_findings"] = report.total_findings
    data["recommendations"] = recommendations(report)
    return json.dumps(data, indent=2, ensure_ascii=False)


def _short(value: object, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def render(report: ValidationReport, console: Console) -> None:
    colour = "green" if report.verdict is ValidationVerdict.PASS else "red"
    scope = f" (ids starting with {report.id_prefix!r})" if report.id_prefix else ""
    if report.kind == "before":
        console.print(f"[bold {colour}]{report.verdict.value.upper()}[/] export {report.export_dir} vs legacy "
                      f"{report.legacy_source}{scope}: {report.store_count} exported, {report.legacy_count} legacy "
                      f"assessments; {report.buckets_differing} of {report.buckets} buckets differ, "
                      f"{report.histories_checked} audit entries checked in {sum(report.seconds.values()):.1f} s",
                      highlight=False)
    else:
        console.print(f"[bold {colour}]{report.verdict.value.upper()}[/] legacy {report.legacy_source} vs store{scope}: "
                  f"{report.legacy_count} legacy, {report.store_count} store assessments; "
                      f"{report.buckets_differing} of {report.buckets} buckets differ, {report.rows_fetched} rows "
                      f"fetched, {report.histories_checked} histories checked in "
                      f"{sum(report.seconds.values()):.1f} s", highlight=False)
    totals = Table(title="Findings")
    totals.add_column("kind")
    totals.add_column("total", justify="right")
    totals.add_column("shown", justify="right")
    for kind in FindingKind:
        if kind not in report.totals:
            continue
        n = report.totals.get(kind, 0)
        totals.add_row(kind.value, str(n), str(min(n, report.max_findings)), style="red" if n else "dim")
    console.print(totals)
    if report.findings:
        table = Table(title=f"Findings (at most {report.max_findings} of each kind)")
        for name in ("kind", "assessment", "field", "values", "detail"):
            table.add_column(name, overflow="fold")
        for f in report.findings:
            table.add_row(f.kind.value, f.assessment_id or "", f.field or "",
                          "\n".join(f"{label}: {_short(v)}" for label, v in f.values), f.detail)
        console.print(table)
    for line in recommendations(report):
        console.print(f"• {line}", highlight=False)
