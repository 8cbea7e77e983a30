"""``python -m assessment_store.monitoring.grafana`` writes the Grafana dashboard's JSON (see ``_grafana``)."""

from ._grafana import main

if __name__ == "__main__":
    main()
