"""Pins the public names: removing or renaming one is a breaking change and must be deliberate."""

import assessment_store
from assessment_store import bridge, client, core, migration, monitoring, projections, schemas, streams


def test_assessment_store_public_names() -> None:
    """The top-level package exports exactly these names."""
    assert sorted(assessment_store.__all__) == sorted([
        "Assessment", "AssessmentNotFound", "AssessmentStore", "AssessmentStoreError", "BackendError",
        "CodecError", "CommandTimeout", "DataRejected", "DatabaseUnavailable", "DownloadFailed", "Event", "EventRecord", "EventSource", "EventType",
        "InvalidTransition", "KafkaUnavailable", "MissingTool", "NotQuarantined", "Outcome", "PortInUse", "Position", "PositionTable", "ServiceFailed", "Settings",
        "StackError", "State", "StoreUsageError", "Subscription", "SyncAssessmentStore", "SyncSubscription",
        "UnresolvableSchema", "ValidationError", "VersionConflict", "WaitTimeout",
        "__version__",
    ])
    for name in assessment_store.__all__:
        assert hasattr(assessment_store, name), name


def test_every_error_derives_from_one_root() -> None:
    """Every exported exception class is an AssessmentStoreError."""
    errors = [getattr(assessment_store, n) for n in assessment_store.__all__ if n.endswith(("Error", "Found",
              "Transition", "Conflict", "Timeout", "Unavailable", "InUse", "Tool", "Failed", "Rejected",
              "Quarantined"))]
    assert errors
    for cls in errors:
        assert issubclass(cls, assessment_store.AssessmentStoreError), cls


def test_role_packages_export_what_they_declare() -> None:
    """Every package re-exports each name of its __all__."""
    for mod in (core, schemas, streams, projections, client, bridge, migration, monitoring):
        for name in mod.__all__:
            assert hasattr(mod, name), f"{mod.__name__}.{name}"


def test_each_package_imports_first_without_a_cycle() -> None:
    """Importing any package first, in a fresh interpreter, succeeds (no circular import)."""
    import subprocess
    import sys

    for name in ("core", "schemas", "streams", "projections", "client", "bridge", "migration", "monitoring", "stack", "api", "cli"):
        r = subprocess.run([sys.executable, "-c", f"import assessment_store.{name}; assessment_store.AssessmentStore"],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{name}: {r.stderr}"
