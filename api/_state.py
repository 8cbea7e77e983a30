"""What the routes share, kept on ``app.state`` by ``create_app`` and handed to them as dependencies:
the settings and the one store client of the process."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from assessment_store.client import AssessmentStore
from assessment_store.core import Settings

__all__ = ["SettingsDep", "StoreDep", "attach"]


def attach(app: FastAPI, settings: Settings, store: AssessmentStore) -> None:
    app.state.settings = settings
    app.state.store = store


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _store(request: Request) -> AssessmentStore:
    store: AssessmentStore = request.app.state.store
    return store


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[AssessmentStore, Depends(_store)]
