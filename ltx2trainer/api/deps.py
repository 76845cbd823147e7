"""Dependencies of the gateway's routes, as `Annotated` aliases so that route signatures read like prose."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from ltx2trainer.jobs.keys import Principal, authenticate
from ltx2trainer.settings import Settings
from ltx2trainer.wiring import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_settings(request: Request) -> Settings:
    return request.app.state.services.settings


def get_principal(request: Request) -> Principal:
    services: Services = request.app.state.services
    principal = request.app.state.auth_cache.get(request.headers.get("authorization"),
                                                 lambda header: authenticate(services.db, header))
    if principal is None:
        raise HTTPException(
            status_code=401,
            detail="missing or invalid API key: send 'Authorization: Key <key id>:<secret>' (or Bearer)",
            headers={"WWW-Authenticate": 'Key realm="ltx2trainer"'},
        )
    return principal


def get_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise HTTPException(status_code=403, detail="this needs an admin key")
    return principal


def base_url(request: Request) -> str:
    """Where clients reach this gateway: the configured public URL, or the one this request used."""
    configured = request.app.state.services.settings.public_base_url
    return (configured or str(request.base_url)).rstrip("/")


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(get_admin)]
BaseUrlDep = Annotated[str, Depends(base_url)]
