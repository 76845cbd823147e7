"""Dependencies of the gateway's routes, as `Annotated` aliases so that route signatures read like prose."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from ltx2trainer.jobs.keys import Principal, authenticate
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services

# The dependencies are `async def`: they only read app state and the auth cache, so running them on the event
# loop saves a thread-pool hop each (FastAPI runs plain `def` dependencies in the pool).


async def get_services(request: Request) -> Services:
    return request.app.state.services


async def get_settings(request: Request) -> Settings:
    return request.app.state.services.settings


async def lookup_principal(app, header: str | None) -> Principal | None:
    """The principal of an `Authorization` header value, or None: the database is asked only on an auth-cache
    miss (also used by the body-limit middleware, before a route runs)."""
    cache = app.state.auth_cache
    principal = cache.peek(header)
    if principal is None:
        services: Services = app.state.services
        principal = await run_in_threadpool(cache.get, header, lambda value: authenticate(services.db, value))
    return principal


async def get_principal(request: Request) -> Principal:
    """The caller, from the (first) `Authorization` header."""
    principal = await lookup_principal(request.app, request.headers.get("authorization"))
    if principal is None:
        raise HTTPException(
            status_code=401,
            detail="missing or invalid API key: send 'Authorization: Key <key id>:<secret>' (or Bearer)",
            headers={"WWW-Authenticate": 'Key realm="ltx2trainer"'},
        )
    return principal


async def get_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise HTTPException(status_code=403, detail="this needs an admin key")
    return principal


async def base_url(request: Request) -> str:
    """Where clients reach this gateway: the configured public URL, or the one this request used."""
    configured = request.app.state.services.settings.public_base_url
    return (configured or str(request.base_url)).rstrip("/")


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(get_admin)]
BaseUrlDep = Annotated[str, Depends(base_url)]
