"""The request body size limit of uploads (settings.MAX_UPLOAD_MB)."""

from __future__ import annotations

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload


class SizeLimitUploadHandler(FileUploadHandler):
    """Refuse an upload over MAX_UPLOAD_MB before any of it is stored.

    First in FILE_UPLOAD_HANDLERS, so it sees every chunk before the memory and temporary
    file handlers do. A Content-Length over the limit stops the upload at its first chunk;
    a body that turns out longer stops at the limit. Fields before the file (the CSRF token)
    are kept; the rest of the body is read and thrown away. The view finds
    `request.upload_too_large` set and shows its form error.
    """

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.limit = settings.MAX_UPLOAD_MB * 1024 * 1024
        self.received = 0
        self.too_large = content_length > self.limit

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.too_large or self.received > self.limit:
            self.request.upload_too_large = True
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler makes the file
