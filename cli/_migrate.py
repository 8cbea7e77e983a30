"""``assessment-store migrate …``: the migration off the legacy service, step by step (docs/migration.md)."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from assessment_store.core import Settings

from ._console import EXIT_REFUSED, EXIT_USAGE, fail, out
from ._console import run_cli as _run
from ._options import JsonFlag

migrate_app = typer.Typer(help="Export, import and validate the migration off legacy (docs/migration.md).",
                          no_args_is_help=True)


@migrate_app.command("validate")
def migrate_validate(
    legacy_url: Annotated[str | None, typer.Option(
        "--legacy-url", help="The legacy service's HTTP face (bin/legacy-http.js); with --before, default: the "
                             "manifest's.")] = None,
    before: Annotated[Path | None, typer.Option(
        "--before", help="Check this export (migrate export) against its manifest and legacy, before importing it.",
        file_okay=False)] = None,
    as_json: JsonFlag = False,
    buckets: Annotated[int, typer.Option("--buckets", min=1, max=1_048_576,
                                         help="Buckets of ids compared by checksum.")] = 4096,
    max_findings: Annotated[int, typer.Option("--max-findings", min=0,
                                              help="Findings shown per kind (all are counted).")] = 20,
    id_prefix: Annotated[str | None, typer.Option(
        "--id-prefix", help="Only the ids starting with this (with --before, default: the manifest's).")] = None,
    deep: Annotated[bool, typer.Option("--deep", help="Check every history and fold, not a sample.")] = False,
) -> None:
    """Legacy vs store: lost, extra, corrupted, duplicates, illegal histories, projection vs fold. With
    --before DIR, legacy vs an export: manifest checksums, counts per status, duplicates, the audit log's
    transitions and unknown assessments, changed records. Exit 0 when they agree, 1 (refused) with findings."""
    from assessment_store.migration import exit_code, render, report_json, validate_after, validate_before

    if before is not None:
        report = _run(validate_before(Settings(), before, legacy_url=legacy_url, buckets=buckets,
                                      max_findings=max_findings, id_prefix=id_prefix))
    elif legacy_url is None:
        fail("--legacy-url is required (or --before DIR)", EXIT_USAGE)
    else:
        report = _run(validate_after(Settings(), legacy_url, buckets=buckets, max_findings=max_findings,
                                     id_prefix=id_prefix or "", deep=deep))
    if as_json:
        sys.stdout.write(report_json(report) + "\n")
    else:
        render(report, out)
    raise typer.Exit(exit_code(report))


@migrate_app.command("export")
def migrate_export(
    legacy_url: Annotated[str, typer.Option("--legacy-url", help="The legacy service's HTTP face (bin/legacy-http.js).")],
    out_dir: Annotated[Path, typer.Option("--out", help="The export directory (created; must be empty).",
                                          file_okay=False)],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier export in --out.")] = False,
    id_prefix: Annotated[str, typer.Option("--id-prefix", help="Only the ids starting with this.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Legacy's records and audit log into DIR: assessments.jsonl, audit.jsonl, manifest.json (counts, SHA-256,
    time range). Refuses a non-empty DIR unless --overwrite."""
    from assessment_store.migration import export_legacy

    manifest = _run(export_legacy(Settings(), legacy_url, out_dir, overwrite=overwrite, id_prefix=id_prefix,
                                  progress=not as_json))
    if as_json:
        sys.stdout.write(json.dumps(manifest.to_json(), indent=2) + "\n")
        return
    out.print(f"exported {manifest.assessments.records} assessments and {manifest.audit.records} audit entries from "
              f"{manifest.legacy_url} into {out_dir} in {manifest.seconds:.1f} s "
              f"({', '.join(f'{k} {v}' for k, v in sorted(manifest.by_status.items())) or 'none'})", highlight=False)


@migrate_app.command("import-audit")
def migrate_import_audit(
    export_dir: Annotated[Path, typer.Argument(help="An export directory (migrate export).", file_okay=False)],
    as_json: JsonFlag = False,
) -> None:
    """The export's legacy audit log into public.migration_audit; importing it again adds nothing.
    Exit 1 when lines were not audit entries."""
    from assessment_store.migration import import_audit

    report = _run(import_audit(Settings(), export_dir))
    if as_json:
        sys.stdout.write(json.dumps({"path": str(report.path), "lines": report.lines, "imported": report.imported,
                                     "already_imported": report.already_imported, "invalid": report.invalid,
                                     "bad_lines": [list(b) for b in report.bad_lines]}, indent=2) + "\n")
    else:
        out.print(f"{report.imported} audit entries imported, {report.already_imported} already there, "
                  f"{report.invalid} invalid lines", highlight=False)
        for line, reason in report.bad_lines[:20]:
            out.print(f"  line {line}: {reason}", highlight=False)
    raise typer.Exit(EXIT_REFUSED if report.invalid else 0)


@migrate_app.command("import")
def migrate_import(
    export_dir: Annotated[Path, typer.Argument(help="An export directory (migrate export).", file_okay=False)],
    legacy_url: Annotated[str | None, typer.Option(
        "--legacy-url", help="Legacy to validate against afterwards (default: the manifest's).")] = None,
    id_prefix: Annotated[str | None, typer.Option(
        "--id-prefix", help="Validate only the ids starting with this (default: the manifest's).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an earlier run's assessments.rejected.jsonl.")] = False,
    buckets: Annotated[int, typer.Option("--buckets", min=1, max=1_048_576,
                                         help="Buckets of ids compared by checksum.")] = 4096,
    max_findings: Annotated[int, typer.Option("--max-findings", min=0,
                                              help="Findings shown per kind (all are counted).")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """The whole export into the store: assessments in batches of 1,000 (resumable), the audit log, then the
    after-validation. One summary; exit 0 when everything arrived and validation found nothing, else 1."""
    from assessment_store.migration import import_export, recommendations, render, report_json

    done = _run(import_export(Settings(), export_dir, legacy_url=legacy_url, id_prefix=id_prefix, buckets=buckets,
                              max_findings=max_findings, overwrite=overwrite, progress=not as_json))
    a, audit, v = done.assessments, done.audit, done.validation
    summary = {
        "export_dir": str(export_dir), "ok": done.ok,
        "assessments": {"lines": a.total_lines, "imported": a.imported, "up_to_date": a.up_to_date,
                        "store_ahead": a.store_ahead, "rejected": a.rejected, "rejected_file": str(a.rejected_file),
                        "commands_sent": a.commands_sent, "refused": a.refused, "already_done": a.already_done},
        "audit": {"imported": audit.imported, "already_imported": audit.already_imported, "invalid": audit.invalid},
        "validation": json.loads(report_json(v)),
    }
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    else:
        colour = "green" if done.ok else "red"
        out.print(f"[bold {colour}]{'DONE' if done.ok else 'NOT DONE'}[/] {export_dir}: {a.imported} assessments "
                  f"imported, {a.up_to_date} up to date, {a.store_ahead} further along in the store, {a.rejected} "
                  f"rejected ({a.rejected_file}); {audit.imported} audit entries imported, {audit.already_imported} "
                  f"already there, {audit.invalid} invalid; validation {v.verdict.value} "
                  f"({v.total_findings} findings, run {v.run_id})", highlight=False)
        if v.total_findings:
            render(v, out)
        elif not done.ok:
            for line in recommendations(v):
                out.print(f"• {line}", highlight=False)
    raise typer.Exit(0 if done.ok else EXIT_REFUSED)


def _duration(text: str, option: str) -> timedelta:
    """``90s``, ``15m``, ``24h``, ``7d`` (or plain seconds) as a timedelta; a usage error otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        fail(f"{option} {text!r} is not a duration (e.g. 90s, 15m, 24h, 7d)", EXIT_USAGE)
    if not seconds >= 0 or seconds == float("inf"):
        fail(f"{option} must be a non-negative, finite duration, got {text!r}", EXIT_USAGE)
    return timedelta(seconds=seconds)


@migrate_app.command("cleanup")
def migrate_cleanup(
    legacy_url: Annotated[str, typer.Option("--legacy-url", help="The legacy service's HTTP face.")],
    archive_dir: Annotated[Path, typer.Option("--archive-dir", file_okay=False,
                                              help="Where the verified archive (Avro files + manifest) is written.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and what blocks it; change nothing.")] = False,
    hold: Annotated[str, typer.Option("--hold", help="How long the flags must have stayed at 100 % unchanged.")] = "24h",
    validation_max_age: Annotated[str, typer.Option(
        "--validation-max-age", help="How recent the passing final validation must be.")] = "24h",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=10_000,
                                            help="Assessments removed from legacy per request.")] = 1000,
    keep_services: Annotated[bool, typer.Option(
        "--keep-services", help="Leave the local stack's bridge and reverse sync running.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Archive the legacy data (verified Avro files), then remove the migrated assessments from legacy and stop
    the bridge and the reverse sync. Refused (exit 1) unless the final validation passed recently and the flags
    held at 100 % for --hold. Interrupted, run it again: it reuses the verified archive."""
    from assessment_store.migration import cleanup_legacy
    from assessment_store.stack import Stack

    settings = Settings()
    report = _run(cleanup_legacy(settings, legacy_url, archive_dir, hold=_duration(hold, "--hold"),
                                 validation_max_age=_duration(validation_max_age, "--validation-max-age"),
                                 dry_run=dry_run, batch_size=batch_size))
    stopped: dict[str, bool] = {}
    if not dry_run and not keep_services:
        stopped = Stack(settings).down(["bridge", "reverse-sync"], log=lambda _m: None)
    doc = {**report.to_json(), "stopped": [name for name, was in stopped.items() if was]}
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        plan = report.plan
        out.print(f"legacy {plan.legacy_url}: {plan.legacy_assessments:,} assessments; archive {plan.archive_dir}"
                  f"{' (reusing the verified archive of an interrupted run)' if plan.reuse_archive else ''}")
        for reason in plan.reasons_to_wait:
            out.print(f"[yellow]blocked:[/] {reason}")
        if dry_run:
            out.print("dry run: nothing archived or removed" if not plan.reasons_to_wait
                      else "dry run: the cleanup would be refused until the above holds")
        else:
            for kind, f in report.archive.items():
                out.print(f"archived {f.records:,} {kind} to {f.path} (sha256 {f.sha256[:16]}…), read back and verified")
            out.print(f"removed {report.purged:,} migrated assessments from legacy in {report.batches} batches "
                      f"({report.already_gone:,} already gone, {report.kept_not_in_store:,} kept: not in the store)")
            if doc["stopped"]:
                out.print(f"stopped: {', '.join(doc['stopped'])}")
    if dry_run and report.plan.reasons_to_wait:
        raise typer.Exit(EXIT_REFUSED)
