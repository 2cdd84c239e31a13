"""Errors of the service layer (the API maps them to HTTP in ``cloud/api/errors.py``)::

CloudError (cloud.domain.errors)
└── ServiceError
    ├── NotFound        no such row in the caller's organisation (also hides other orgs' rows)
    ├── Conflict        the row exists but its state forbids the operation (closed account, ...)
    ├── PermissionDenied  the actor's role may not do this
    └── AuthError       bad credentials, expired/forged token, throttled login (retry_after_s)
"""

from __future__ import annotations

from cloud.domain.errors import CloudError

__all__ = ["AuthError", "Conflict", "NotFound", "PermissionDenied", "ServiceError"]


class ServiceError(CloudError):
    """A service refused a request."""


class NotFound(ServiceError):
    """No such row visible to the caller."""


class Conflict(ServiceError):
    """The current state forbids the operation."""


class PermissionDenied(ServiceError):
    """The actor's role does not allow the operation."""


class AuthError(ServiceError):
    """Authentication failed (credentials, token, login throttled)."""

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
