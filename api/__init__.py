"""The HTTP API (FastAPI): every store operation, bearer-token writes, problem+json errors."""

from ._app import create_app

__all__ = ["create_app"]
