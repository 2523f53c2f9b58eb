"""Logging filters named in settings.LOGGING."""

from __future__ import annotations

import logging

from django.core.exceptions import BadRequest, PermissionDenied


class QuietPermissionDenied(logging.Filter):
    """Log an ordinary 403 (or 400) as its one line, without the traceback Django attaches.

    Django logs every PermissionDenied and BadRequest on `django.request` with the exception,
    so each refused page (a viewer opening a job of a kind they may not see) printed a
    traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PermissionDenied | BadRequest):
            record.exc_info = None
            record.exc_text = None
        return True
