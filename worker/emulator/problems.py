"""Mailchimp's problem+json errors as the emulator raises them: one exception carrying the exact
status, title and detail Mailchimp answers with, and helpers for the common ones."""

from __future__ import annotations

import uuid
from typing import Any

PROBLEM_TYPE = "https://mailchimp.com/developer/marketing/docs/errors/"
VALIDATION_DETAIL = (
    "The resource submitted could not be validated. "
    "For field-specific details, see the 'errors' array."
)


class ApiError(Exception):
    """A Mailchimp problem+json answer: status, title (as Mailchimp spells it), detail."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": str(uuid.uuid4()),
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def not_found() -> ApiError:
    return ApiError(404, "Resource Not Found", "The requested resource could not be found.")


def invalid(detail: str, errors: list[dict[str, str]] | None = None) -> ApiError:
    return ApiError(400, "Invalid Resource", detail, errors)


def schema_error(fld: str, message: str) -> ApiError:
    return invalid(VALIDATION_DETAIL, [{"field": fld, "message": message}])
