"""``assessment-store migrate …``: the migration off the legacy service, step by step (docs/migration.md)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from assessment_store.core import Backoff, Settings

from ._console import EXIT_REFUSED, EXIT_USAGE, fail, out
from ._console import run_cli as _run
from ._options import Actor, JsonFlag

migrate_app = typer.Typer(help="Export, import, validate, roll out, roll back and clean up the migration off legacy "
                          "(docs/migration.md).", no_args_is_help=True)


_Topic = Annotated[str | None, typer.Option("--rollout-topic", hidden=True, help="The rollout topic (tests).")]
_ObsTopic = Annotated[str | None, typer.Option("--observations-topic", hidden=True, help="The observations topic (tests).")]
_FlagsTopic = Annotated[str | None, typer.Option("--flags-topic", hidden=True, help="The flags topic (tests).")]


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
    """``90s``, ``15m``, ``24h`` (or plain seconds) as a timedelta; a usage error (64) otherwise."""
    return timedelta(seconds=_seconds(text, option))


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
    id_prefix: Annotated[str, typer.Option("--id-prefix", help="Only the ids starting with this (a staged cleanup; "
                                                               "the final validation must cover the same prefix).")] = "",
    flags_topic: _FlagsTopic = None,
    as_json: JsonFlag = False,
) -> None:
    """Archive the legacy data (verified Avro files), then remove the migrated assessments from legacy and stop
    the bridge and the reverse sync. Refused (exit 1) unless the final validation passed recently and the flags
    held at 100 % for --hold. Interrupted, run it again: it reuses the verified archive."""
    from assessment_store.migration import FLAGS_TOPIC, cleanup_legacy
    from assessment_store.stack import Stack

    settings = Settings()
    report = _run(cleanup_legacy(settings, legacy_url, archive_dir, hold=_duration(hold, "--hold"),
                                 validation_max_age=_duration(validation_max_age, "--validation-max-age"),
                                 dry_run=dry_run, batch_size=batch_size, id_prefix=id_prefix,
                                 flags_topic=flags_topic or FLAGS_TOPIC))
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

# --- the gated rollout (migration/_rollout.py) -------------------------------------------------------



def _seconds(text: str, name: str) -> float:
    from assessment_store.migration import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=name) from None


def _lag_probe(settings: Settings, group_glob: str) -> Any:
    """Unhealthy while any consumer group matching ``group_glob`` is ERR, STALL or STOP (a LagMonitor
    runs beside the controller: the statuses need its sliding window)."""
    from assessment_store.migration import HealthReading
    from assessment_store.monitoring import LagMonitor, Status

    monitor = LagMonitor(settings, group_glob=group_glob)
    bad = {Status.ERR, Status.STALL, Status.STOP}

    async def probe() -> HealthReading:
        await monitor.start()  # idempotent: the first probe starts it
        snap = monitor.latest
        if not snap.reachable:
            return HealthReading(False, "consumer lag: cluster unreachable")
        worst = [f"{g.group} {g.status.value}" for g in snap.groups if g.status in bad]
        return HealthReading(not worst, "consumer lag: " + (", ".join(worst) if worst else "OK"))

    probe.monitor = monitor  # type: ignore[attr-defined]
    return probe


@migrate_app.command("rollout")
def migrate_rollout(
    steps: Annotated[str, typer.Option("--steps", help="Percentages, strictly increasing.")] = "1,5,10,25,50,75,90,95,99,100",
    soak: Annotated[str | None, typer.Option("--soak", help="Soak time of every step (default 12h; the first 24h).")] = None,
    first_soak: Annotated[str | None, typer.Option("--first-soak", help="Soak time of the first step (default: --soak, or 24h).")] = None,
    window: Annotated[str, typer.Option("--window", help="Gate window, fleet-wide.")] = "60s",
    grace: Annotated[str | None, typer.Option("--grace", help="Wait for late observations after a window (default: min(5s, window/4)).")] = None,
    hold_error_rate: Annotated[float, typer.Option(help="HOLD above this error rate, %.")] = 5.0,
    hold_p95: Annotated[str, typer.Option(help="HOLD above this p95 response time.")] = "5s",
    rollback_error_rate: Annotated[float, typer.Option(help="ROLL BACK above this error rate, %.")] = 10.0,
    rollback_p95: Annotated[str, typer.Option(help="ROLL BACK above this p95 response time.")] = "10s",
    rollback_failure_rate: Annotated[float, typer.Option(help="ROLL BACK above this failure rate, %.")] = 5.0,
    rollback_mismatch_rate: Annotated[float, typer.Option(help="ROLL BACK above this shadow mismatch rate, %.")] = 1.0,
    min_calls: Annotated[int, typer.Option(min=1, help="Store-routed calls below which a window is inconclusive.")] = 100,
    min_compared: Annotated[int, typer.Option(min=1, help="Shadow comparisons below which the mismatch gate has no reading.")] = 20,
    hold_windows: Annotated[int, typer.Option(min=1, help="Consecutive windows at HOLD level to hold.")] = 2,
    rollback_windows: Annotated[int, typer.Option(min=1, help="Consecutive windows at ROLLBACK level to roll back.")] = 3,
    health: Annotated[str, typer.Option(help="Health gate: none, reverse-sync, or lag (consumer groups ERR/STALL/STOP).")] = "none",
    health_groups: Annotated[str, typer.Option(help="With --health lag: the groups watched (glob).")] = "assessment-store-*",
    max_behind: Annotated[int, typer.Option(min=0, help="With --health reverse-sync: events behind tolerated.")] = 10_000,
    new: Annotated[bool, typer.Option("--new", help="Start a new rollout although the last one ended "
                                                    "(rolled back, aborted or complete).")] = False,
    ride_out: Annotated[bool, typer.Option("--ride-out/--exit-on-outage",
                                           help="On a Kafka or PostgreSQL outage: wait (backoff up to 10 s) and "
                                                "resume, or exit 69 (rerunning resumes).")] = True,
    actor: Actor = None,
    as_json: JsonFlag = False,
    rollout_topic: _Topic = None,
    observations_topic: _ObsTopic = None,
    flags_topic: _FlagsTopic = None,
) -> None:
    """Run the gated rollout in the foreground (resume the unfinished one, or start one: after an ended
    rollout only with --new) until it is complete (exit 0), rolled back or aborted (exit 1). One line
    per decision (--json: one object)."""
    import json as _json

    from assessment_store.migration import (
        FLAGS_TOPIC, OBSERVATIONS_TOPIC, ROLLOUT_TOPIC, GateThresholds, HealthProbe, RolloutController,
        RolloutEvent, RolloutPlan, RolloutState, event_line, reverse_sync_probe,
    )

    try:
        step_list = tuple(float(s) for s in steps.split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"not a list of numbers: {steps!r}", param_hint="--steps") from None
    soak_s = _seconds(soak, "--soak") if soak is not None else 12 * 3600.0
    first_s = _seconds(first_soak, "--first-soak") if first_soak is not None else (soak_s if soak is not None else 24 * 3600.0)
    window_s = _seconds(window, "--window")
    grace_s = _seconds(grace, "--grace") if grace is not None else min(5.0, window_s / 4)
    if health not in ("none", "reverse-sync", "lag"):
        raise typer.BadParameter("none, reverse-sync or lag", param_hint="--health")
    try:
        plan = RolloutPlan(
            steps=step_list, first_soak_s=first_s, soak_s=soak_s, window_s=window_s, grace_s=grace_s,
            thresholds=GateThresholds(
                hold_error_rate=hold_error_rate / 100, hold_p95_s=_seconds(hold_p95, "--hold-p95"),
                rollback_error_rate=rollback_error_rate / 100, rollback_p95_s=_seconds(rollback_p95, "--rollback-p95"),
                rollback_failure_rate=rollback_failure_rate / 100, rollback_mismatch_rate=rollback_mismatch_rate / 100,
                min_calls=min_calls, min_compared=min_compared, hold_windows=hold_windows,
                rollback_windows=rollback_windows))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    settings = Settings()
    probe: HealthProbe | None = None
    if health == "reverse-sync":
        probe = reverse_sync_probe(settings, max_behind=max_behind)
    elif health == "lag":
        probe = _lag_probe(settings, health_groups)

    def progress(ev: RolloutEvent, _state: RolloutState) -> None:
        if ev.type == "lease":
            return
        if as_json:
            sys.stdout.write(_json.dumps(ev.to_json()) + "\n")
        else:
            out.print(event_line(ev), highlight=False, soft_wrap=True)
        sys.stdout.flush()

    async def go() -> RolloutState:
        controller = RolloutController(
            settings, plan, actor=actor, topic=rollout_topic or ROLLOUT_TOPIC,
            observations_topic=observations_topic or OBSERVATIONS_TOPIC, flags_topic=flags_topic or FLAGS_TOPIC,
            health_probe=probe, on_event=progress, new=new)
        try:
            outages = Backoff(logging.getLogger("assessment_store.migration.rollout"), initial_s=0.5, cap_s=10.0)
            return await controller.run(outages=outages if ride_out else None)
        finally:
            monitor = getattr(probe, "monitor", None)
            if monitor is not None:
                await monitor.stop()

    final = _run(go())
    raise typer.Exit(0 if final.status == "complete" else EXIT_REFUSED)


@migrate_app.command("status")
def migrate_status(as_json: JsonFlag = False, rollout_topic: _Topic = None, flags_topic: _FlagsTopic = None) -> None:
    """The migration's phase (preparation, dual mode, full migration, cleanup, done), the latest validation, the
    reverse sync's lag; the rollout: current step, time in step, the last decisions with their gate readings."""
    import json as _json

    from assessment_store.migration import FLAGS_TOPIC, ROLLOUT_TOPIC, read_phase, read_rollout, render_phase, render_status

    settings = Settings()
    state = _run(read_rollout(settings, topic=rollout_topic or ROLLOUT_TOPIC))
    phase = _run(read_phase(settings, state, flags_topic=flags_topic or FLAGS_TOPIC))
    if as_json:
        sys.stdout.write(_json.dumps({**state.to_json(), **phase.to_json()}) + "\n")
    else:
        render_phase(phase, out)
        render_status(state, out)


@migrate_app.command("baseline")
def migrate_baseline(
    window: Annotated[str, typer.Option("--window", help="The window measured, ending now.")] = "15m",
    vacuum: Annotated[bool, typer.Option("--vacuum", help="VACUUM (ANALYZE) the projection's tables "
                                                          "(default: ANALYZE only).")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="Flag regressions against the latest stored baseline "
                                                            "(exit 1 on one).")] = False,
    p95_tolerance: Annotated[float, typer.Option(min=0, help="--compare: p95 may grow by this many %.")] = 20.0,
    throughput_tolerance: Annotated[float, typer.Option(min=0, max=100,
                                                        help="--compare: throughput may drop by this many %.")] = 20.0,
    error_rate_tolerance: Annotated[float, typer.Option(min=0, max=100, help="--compare: the error rate may grow "
                                                                             "by this many points.")] = 1.0,
    dead_ratio: Annotated[float, typer.Option(min=0, max=100, help="Suggest a VACUUM above this % of dead "
                                                                   "tuples.")] = 20.0,
    large_rows: Annotated[int, typer.Option(min=1, help="Tables from this many rows count as large "
                                                        "(sequential scans on them are reported).")] = 10_000,
    as_json: JsonFlag = False,
    observations_topic: _ObsTopic = None,
) -> None:
    """After the migration: ANALYZE the projection, report unused indexes, dead tuples and sequential scans with
    the suggested actions, then record a performance baseline of the window (throughput, error rate, response
    times). With --compare, exit 1 when it regressed against the latest stored one."""
    from assessment_store.migration import OBSERVATIONS_TOPIC, Tolerance, run_baseline

    window_s = _seconds(window, "--window")
    if window_s <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--window")
    report = _run(run_baseline(
        Settings(), window_s=window_s, vacuum=vacuum, compare=compare,
        tolerance=Tolerance(p95=p95_tolerance / 100, throughput=throughput_tolerance / 100,
                            error_rate=error_rate_tolerance / 100),
        dead_ratio=dead_ratio / 100, large_rows=large_rows, observations_topic=observations_topic or OBSERVATIONS_TOPIC))
    if as_json:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
    else:
        _render_baseline(report)
    raise typer.Exit(EXIT_REFUSED if report.regressions else 0)


def _render_baseline(report: Any) -> None:
    from rich.table import Table

    def size(n: int) -> str:
        return f"{n / 1024:,.0f} kB" if n < 1024 * 1024 else f"{n / 1024 / 1024:,.1f} MB"

    what = "VACUUM (ANALYZE)" if report.vacuumed else "ANALYZE"
    out.print(f"{what}: {len(report.analyzed)} tables of {report.schema}", highlight=False)
    t = Table("table", "live", "dead", "dead %", "seq scans", "index scans", "size", "last analyze",
              title=f"tables ({report.schema})")
    for s in report.tables:
        t.add_row(s.table, f"{s.live_tuples:,}", f"{s.dead_tuples:,}", f"{s.dead_ratio * 100:.1f}", f"{s.seq_scans:,}",
                  f"{s.index_scans:,}", size(s.size_bytes),
                  "-" if s.last_analyze is None else s.last_analyze.strftime("%Y-%m-%d %H:%M:%S"))
    out.print(t)
    i = Table("table", "index", "scans", "size", "unique", title=f"indexes ({report.schema})")
    for x in report.indexes:
        i.add_row(x.table, x.index, f"{x.scans:,}", size(x.size_bytes), "yes" if x.unique else "")
    out.print(i)
    for sug in report.suggestions:
        out.print(f"[yellow]{sug.kind}[/] {sug.table}: {sug.detail} -> {sug.action}", highlight=False)
    if not report.suggestions:
        out.print("no suggestions: no unused index, no table with many dead tuples or sequential scans")
    b = report.baseline

    def ms(v: float | None) -> str:
        return "-" if v is None else ("> 60000 ms" if v == float("inf") else f"{v:,.1f} ms")

    err = "-" if b.error_rate is None else f"{b.error_rate * 100:.2f} %"
    out.print(f"baseline {report.baseline_id} over {b.window_s:,.0f} s (source: {b.source}, {b.instances} router "
              f"instances, {b.observation_windows} windows): [bold]{b.throughput_per_s:,.2f}/s[/] "
              f"({b.throughput_per_min:,.1f}/min), error rate [bold]{err}[/], response time avg {ms(b.avg_ms)} "
              f"p95 {ms(b.p95_ms)} p99 {ms(b.p99_ms)}; projection: {b.outcomes_accepted:,} commands accepted, "
              f"{b.outcomes_refused:,} refused, {b.events_per_s:,.2f} events/s", highlight=False)
    if report.compared_with is not None:
        prev = report.compared_with
        if report.regressions:
            for r in report.regressions:
                out.print(f"[bold red]REGRESSION[/] against baseline {prev.id} "
                          f"({prev.recorded_at.isoformat(timespec='seconds')}): {r.describe()}", highlight=False)
        else:
            out.print(f"[green]no regression[/] against baseline {prev.id} "
                      f"({prev.recorded_at.isoformat(timespec='seconds')})", highlight=False)


def _command(command: str, actor: str | None, rollout_topic: str | None) -> None:
    from assessment_store.migration import ROLLOUT_TOPIC, send_command

    ev = _run(send_command(Settings(), command, actor=actor, topic=rollout_topic or ROLLOUT_TOPIC))
    out.print(f"{command} requested (command {ev.command_id}); the running controller obeys it", highlight=False)


@migrate_app.command("pause")
def migrate_pause(actor: Actor = None, rollout_topic: _Topic = None) -> None:
    """Ask the running controller to stop advancing (the rollback gates stay armed)."""
    _command("pause", actor, rollout_topic)


@migrate_app.command("resume")
def migrate_resume(actor: Actor = None, rollout_topic: _Topic = None) -> None:
    """Ask the running controller to advance again."""
    _command("resume", actor, rollout_topic)


@migrate_app.command("abort")
def migrate_abort(actor: Actor = None, rollout_topic: _Topic = None) -> None:
    """Ask the running controller to stop the rollout, leaving the flags where they are."""
    _command("abort", actor, rollout_topic)


@migrate_app.command("rollback")
def migrate_rollback(
    actor: Actor = None,
    reason: Annotated[str, typer.Option(help="Recorded with the decision.")] = "manual rollback",
    rollout_topic: _Topic = None,
    flags_topic: _FlagsTopic = None,
) -> None:
    """Everything to legacy now (store and dual mode off), recorded as a rollback decision."""
    from assessment_store.migration import FLAGS_TOPIC, ROLLOUT_TOPIC, event_line, manual_rollback

    ev = _run(manual_rollback(Settings(), actor=actor, reason=reason, topic=rollout_topic or ROLLOUT_TOPIC,
                              flags_topic=flags_topic or FLAGS_TOPIC))
    out.print(event_line(ev), highlight=False, soft_wrap=True)
