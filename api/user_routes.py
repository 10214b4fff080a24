"""People: who am I, my API keys, and (admins) the user accounts."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from api.schemas import ROW_ID_MAX
from api.security import request_user
from kb.users import KBForbidden, Principal
from services import Services

router = APIRouter(prefix="/api", tags=["people"])


class KeyCreate(BaseModel):
    label: str = Field("", max_length=100)


class UserCreate(BaseModel):
    name: str = Field(..., min_length=1, max_length=64)
    role: Literal["admin", "member"] = "member"
    password: str | None = Field(None, min_length=8, max_length=1000)


def _services(request: Request) -> Services:
    return request.app.state.services


def _admin(request: Request) -> Principal:
    who = request_user(request)
    if not who.is_admin:
        raise KBForbidden("only an admin may manage users")
    return who


@router.get("/me", summary="Who this request acts for")
def me(request: Request) -> dict[str, Any]:
    who = request_user(request)
    return {"id": who.id, "name": who.name, "role": who.role}


@router.get("/me/keys", summary="Your API keys (prefixes only: a key is shown once, when it is created)")
def my_keys(request: Request) -> dict[str, Any]:
    return {"keys": _services(request).users.keys(request_user(request))}


@router.post("/me/keys", status_code=201, summary="Create an API key for yourself; the reply is the only time "
             "the key is shown")
def create_key(body: KeyCreate, request: Request) -> dict[str, Any]:
    key, info = _services(request).users.issue_key(request_user(request), body.label)
    return info | {"key": key}


@router.delete("/me/keys/{key_id}", summary="Revoke one of your API keys (admins: anyone's); effective at once")
def revoke_key(request: Request, key_id: int = Path(..., ge=1, le=ROW_ID_MAX)) -> dict[str, Any]:
    return _services(request).users.revoke_key(request_user(request), key_id)


@router.get("/users", summary="User accounts (admins only)")
def list_users(request: Request) -> dict[str, Any]:
    _admin(request)
    return {"users": _services(request).users.list()}


@router.post("/users", status_code=201, summary="Add a user (admins only); the reply carries their first API key")
def add_user(body: UserCreate, request: Request) -> dict[str, Any]:
    _admin(request)
    users = _services(request).users
    user = users.add(body.name, body.role, body.password)
    key, info = users.issue_key(user, "first key")
    return {"id": user.id, "name": user.name, "role": user.role, "key": key, "key_id": info["id"]}
