"""People: accounts with roles, their passwords and API keys, and who may read or change which KB.

- Roles: ``admin`` (everything) and ``member`` (chat, the KBs shared with them, their own KBs).
- Passwords are stored as argon2id hashes; API keys (``kbc_`` + 43 random characters) as SHA-256 digests, which
  is enough for a random 256-bit secret and lets a key be found by its digest.
- The built-in ``admin`` row is the local admin: a one-person install (no accounts, or only the ``ui_auth`` /
  ``api_keys`` settings) acts as it, and KBs made before accounts existed belong to it and stay visible to all.
- A KB is ``private`` (owner and admins), ``shared`` (also the users it names) or ``everyone``. Whoever may not
  read a KB gets "does not exist" (404), as for conversations: names of private KBs do not leak.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from kb.db import ApiKeyRow, Database, KBRow, KBShareRow, UserRow
from kb.types import KBConflict, KBError, KBNotFound

if TYPE_CHECKING:
    from kb.service import KnowledgeBase, KnowledgeBaseManager

LOCAL_ADMIN = "admin"
ROLES = ("admin", "member")
VISIBILITY = ("private", "shared", "everyone")
KEY_PREFIX = "kbc_"
_NAME = re.compile(r"^[\w.@-]{1,64}$")
MIN_PASSWORD = 8


class KBForbidden(KBError):
    status_code = 403


@dataclass(frozen=True)
class Principal:
    """Who a request acts for."""

    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Users:
    def __init__(self, db: Database):
        self.db = db
        self._admin: Principal | None = None
        self._hasher: Any = None
        self._lock = threading.Lock()

    @property
    def hasher(self) -> Any:
        if self._hasher is None:
            from argon2 import PasswordHasher

            self._hasher = PasswordHasher()
        return self._hasher

    # --- accounts --------------------------------------------------------------------------------------------
    def local_admin(self) -> Principal:
        """The built-in admin, created on first use."""
        with self._lock:
            if self._admin is None:
                with self.db.session() as s:
                    row = s.scalars(select(UserRow).where(UserRow.name == LOCAL_ADMIN)).first()
                    if row is None:
                        row = UserRow(name=LOCAL_ADMIN, role="admin")
                        s.add(row)
                        s.flush()
                    self._admin = Principal(int(row.id), row.name, row.role)
            return self._admin

    def has_accounts(self) -> bool:
        """True once any account can log in (a password or a live key): then every route needs a credential."""
        with self.db.read() as s:
            if s.scalars(select(UserRow.id).where(UserRow.password_hash.is_not(None)).limit(1)).first():
                return True
            return s.scalars(select(ApiKeyRow.id).where(ApiKeyRow.revoked_at.is_(None)).limit(1)).first() is not None

    def add(self, name: str, role: str = "member", password: str | None = None) -> Principal:
        if not _NAME.match(name or ""):
            raise KBError("user name: 1-64 letters, digits, or . _ @ -")
        if role not in ROLES:
            raise KBError(f"role must be one of {', '.join(ROLES)}")
        row = UserRow(name=name, role=role, password_hash=self._hash(password) if password is not None else None)
        with self.db.session() as s:
            if s.scalars(select(UserRow.id).where(UserRow.name == name)).first() is not None:
                raise KBConflict(f"user '{name}' already exists")
            s.add(row)
            s.flush()
            return Principal(int(row.id), row.name, row.role)

    def _hash(self, password: str) -> str:
        if len(password) < MIN_PASSWORD:
            raise KBError(f"password: at least {MIN_PASSWORD} characters")
        return self.hasher.hash(password)

    def set_password(self, name: str, password: str) -> None:
        digest = self._hash(password)
        with self.db.session() as s:
            row = _named(s, name)
            if row is None:
                raise KBNotFound(f"user '{name}' does not exist")
            row.password_hash = digest

    def login_name(self, name: str | None) -> Principal:
        """Who a login name acts for: that account, or the local admin for any other name (logins with the
        settings credentials accept any name, and the login check refuses those names that are accounts)."""
        if name:
            with self.db.read() as s:
                row = _named(s, name)
            if row is not None:
                return Principal(int(row.id), row.name, row.role)
        return self.local_admin()

    def get(self, name: str) -> Principal:
        with self.db.read() as s:
            row = _named(s, name)
        if row is None:
            raise KBNotFound(f"user '{name}' does not exist")
        return Principal(int(row.id), row.name, row.role)

    def list(self) -> list[dict[str, Any]]:
        with self.db.read() as s:
            rows = s.scalars(select(UserRow).order_by(UserRow.name)).all()
            return [{"id": r.id, "name": r.name, "role": r.role, "has_password": r.password_hash is not None,
                     "created_at": r.created_at} for r in rows]

    # --- credentials -----------------------------------------------------------------------------------------
    def by_password(self, name: str, password: str) -> Principal | None:
        from argon2.exceptions import InvalidHashError, VerificationError

        with self.db.read() as s:
            row = _named(s, name)
        if row is None or row.password_hash is None:
            self.hasher.hash("x" * MIN_PASSWORD)  # the same work as a real check: timing does not reveal names
            return None
        try:
            self.hasher.verify(row.password_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        return Principal(int(row.id), row.name, row.role)

    def by_key(self, key: str) -> Principal | None:
        if not key.startswith(KEY_PREFIX):
            return None
        with self.db.read() as s:
            found = s.execute(select(ApiKeyRow, UserRow).join(UserRow, UserRow.id == ApiKeyRow.user_id).where(
                ApiKeyRow.digest == _digest(key), ApiKeyRow.revoked_at.is_(None))).first()
        if found is None:
            return None
        _, user = found
        return Principal(int(user.id), user.name, user.role)

    def issue_key(self, user: Principal, label: str = "") -> tuple[str, dict[str, Any]]:
        """A new API key for ``user``: the key itself is shown once and only its digest is kept."""
        if len(label) > 100:
            raise KBError("key label: at most 100 characters")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(user_id=user.id, prefix=key[:12], digest=_digest(key), label=label, created_at=time.time())
        with self.db.session() as s:
            s.add(row)
            s.flush()
            return key, _key(row)

    def keys(self, user: Principal) -> list[dict[str, Any]]:
        with self.db.read() as s:
            return [_key(r) for r in s.scalars(select(ApiKeyRow).where(ApiKeyRow.user_id == user.id)
                                               .order_by(ApiKeyRow.created_at))]

    def revoke_key(self, actor: Principal, key_id: int) -> dict[str, Any]:
        """Revoke one of the actor's keys (an admin: anyone's). Effective on the next request."""
        with self.db.session() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None or (row.user_id != actor.id and not actor.is_admin):
                raise KBNotFound(f"key {key_id} does not exist")
            if row.revoked_at is None:
                row.revoked_at = time.time()
            return _key(row)

    # --- who may use which KB --------------------------------------------------------------------------------
    def _owner(self, row: KBRow) -> int:
        return row.owner_id if row.owner_id is not None else self.local_admin().id

    def can_read(self, who: Principal, row: KBRow, shared: set[int] | None = None) -> bool:
        """``shared``: the ids of the KBs shared with ``who``, when the caller has them (else looked up)."""
        if who.is_admin or self._owner(row) == who.id or row.visibility in (None, "everyone"):
            return True
        if row.visibility != "shared":
            return False
        if shared is not None:
            return row.id in shared
        with self.db.read() as s:
            return s.get(KBShareRow, (row.id, who.id)) is not None

    def can_write(self, who: Principal, row: KBRow) -> bool:
        return who.is_admin or self._owner(row) == who.id

    def kb(self, who: Principal, kbs: KnowledgeBaseManager, name: str, write: bool = False) -> KnowledgeBase:
        """The KB if ``who`` may read it (``write``: change it); otherwise it does not exist for them."""
        kb = kbs.get(name)
        row = kb.row()
        if not self.can_read(who, row):
            raise KBNotFound(f"knowledge base '{name}' does not exist")
        if write and not self.can_write(who, row):
            raise KBForbidden(f"knowledge base '{name}' is shared with you read-only: only its owner or an admin "
                              "may change it")
        return kb

    def readable(self, who: Principal, kbs: KnowledgeBaseManager) -> list[str]:
        if who.is_admin:
            return kbs.names()
        with self.db.read() as s:
            rows = s.scalars(select(KBRow).order_by(KBRow.name)).all()
            shared = set(s.scalars(select(KBShareRow.kb_id).where(KBShareRow.user_id == who.id)))
        return [r.name for r in rows if self.can_read(who, r, shared)]

    def share(self, who: Principal, kb: KnowledgeBase, visibility: str | None = None,
              users: Sequence[str] | None = None) -> dict[str, Any]:
        """Set a KB's visibility and (for ``shared``) the users it is shared with; owner or admin only."""
        if visibility is not None and visibility not in VISIBILITY:
            raise KBError(f"visibility must be one of {', '.join(VISIBILITY)}")
        ids = [self.get(n).id for n in users] if users is not None else None
        with self.db.session() as s:
            row = kb.db.lock_kb(s, kb.id)
            if not self.can_write(who, row):
                raise KBForbidden(f"only the owner of '{kb.name}' or an admin may share it")
            if visibility is not None:
                row.visibility = visibility
            if ids is not None:
                s.execute(delete(KBShareRow).where(KBShareRow.kb_id == kb.id))
                s.add_all(KBShareRow(kb_id=kb.id, user_id=i) for i in dict.fromkeys(ids))
        return self.sharing(kb)

    def sharing(self, kb: KnowledgeBase) -> dict[str, Any]:
        with self.db.read() as s:
            row = s.get(KBRow, kb.id)
            names = s.scalars(select(UserRow.name).join(KBShareRow, KBShareRow.user_id == UserRow.id)
                              .where(KBShareRow.kb_id == kb.id).order_by(UserRow.name)).all()
            owner = s.get(UserRow, row.owner_id) if row and row.owner_id is not None else None
        return {"owner": owner.name if owner else LOCAL_ADMIN,
                "visibility": (row.visibility if row else None) or "everyone", "shared_with": list(names)}


def _named(s: Any, name: str) -> UserRow | None:
    return s.scalars(select(UserRow).where(UserRow.name == name)).first()


def _key(r: ApiKeyRow) -> dict[str, Any]:
    return {"id": r.id, "prefix": r.prefix, "label": r.label, "created_at": r.created_at,
            "revoked": r.revoked_at is not None, "revoked_at": r.revoked_at}
