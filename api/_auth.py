"""Bearer-token access: writes need ASSESSMENT_STORE_API_TOKEN, data reads that token or
ASSESSMENT_STORE_API_READ_TOKEN; no token configured means closed, not open."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from ._problems import problem
from ._state import SettingsDep

__all__ = ["install_auth_handler", "require_reader", "require_writer"]


class _AuthError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail


# HTTPBearer (not a plain header parameter) so /openapi.json declares the scheme; auto_error off so a
# missing token, or another scheme than Bearer (compared case-insensitively), is our 401 problem, not
# the framework's.
_bearer = HTTPBearer(auto_error=False, description="ASSESSMENT_STORE_API_TOKEN (writes and reads) or "
                                                   "ASSESSMENT_STORE_API_READ_TOKEN (reads)")

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _configured(token: SecretStr | None) -> bool:
    return token is not None and bool(token.get_secret_value())


def _token_matches(presented: str, *configured: SecretStr | None) -> bool:
    """Constant-time comparison against every configured token (all are compared, whichever
    matches): the token must not leak through response timing."""
    ok = False
    for token in configured:
        if token is not None and token.get_secret_value():
            ok |= hmac.compare_digest(presented.encode(), token.get_secret_value().encode())
    return ok


def _check(credentials: HTTPAuthorizationCredentials | None, *tokens: SecretStr | None) -> None:
    if credentials is None:
        raise _AuthError(401, "this endpoint needs 'Authorization: Bearer <token>'")
    if not _token_matches(credentials.credentials, *tokens):
        raise _AuthError(403, "the bearer token is not valid")


async def require_writer(credentials: Credentials, settings: SettingsDep) -> None:
    if not _configured(settings.api_token):
        raise _AuthError(403, "writes are disabled: no API token is configured; set ASSESSMENT_STORE_API_TOKEN "
                              "to a long random secret and send it as 'Authorization: Bearer <token>'")
    _check(credentials, settings.api_token)


async def require_reader(credentials: Credentials, settings: SettingsDep) -> None:
    # Reads return every request and result: closed by default, like writes.
    if not (_configured(settings.api_read_token) or _configured(settings.api_token)):
        raise _AuthError(403, "reads are disabled: no API token is configured; set ASSESSMENT_STORE_API_READ_TOKEN "
                              "(or ASSESSMENT_STORE_API_TOKEN) and send it as 'Authorization: Bearer <token>'")
    _check(credentials, settings.api_read_token, settings.api_token)


def install_auth_handler(app: FastAPI) -> None:
    @app.exception_handler(_AuthError)
    async def _auth_error(_req: Request, e: _AuthError) -> JSONResponse:
        resp = problem(e.status, "Unauthorized" if e.status == 401 else "Forbidden", e.detail)
        if e.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="assessment-store"'
        return resp
