"""Request limits the app enforces itself, so that every refusal is `{error, message}` JSON.

- Bodies: MAX_CONTENT_LENGTH bounds streamed (chunked) bodies as it bounds bodies with a length:
  past it 413. (werkzeug stops reading a streamed body at the limit and returns what it read, so a
  larger upload was cut to the limit and searched.)
- Multipart forms: werkzeug refuses more than MAX_FORM_PARTS parts, or a non-file field over
  MAX_FORM_MEMORY_SIZE, with a bare 413; here each refusal names the limit it broke.
- URL and headers: MAX_URL_BYTES, MAX_HEADERS fields and MAX_HEADER_BYTES per field, past which the
  app answers 414 / 431. They sit below the WSGI server's own limits (`gunicorn_conf` raises
  gunicorn's), so such requests reach the app; past the server's limits the server answers
  itself, in its own format (docs/api.md, "Limits and hostile input").
"""

from __future__ import annotations

from typing import IO, Any

from apiflask import APIFlask, abort
from flask import Request, current_app, request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream


class FormLimitError(RequestEntityTooLarge):
    """A multipart form over one of werkzeug's form limits (not over the body size)."""


class StreamedBodyLimit(LimitedStream):
    """A body without a length, read up to `limit` bytes: one byte more is a 413, never a cut body."""

    def on_exhausted(self) -> None:
        if self._stream.read(1):  # the server ends the stream at the body's end (wsgi.input_terminated)
            raise RequestEntityTooLarge()

    def readall(self) -> bytes:
        data = super().readall()  # stops quietly at the limit
        if self.is_exhausted:
            self.on_exhausted()
        return data


class _CountingReader:
    """Passes `read` through, counting the bytes and the multipart delimiters (`--boundary`) read."""

    def __init__(self, stream: IO[bytes], boundary: bytes):
        self._stream, self._delimiter = stream, b"--" + boundary
        self._tail = b""  # the end of what was read, shorter than a delimiter
        self.bytes_read = self.delimiters = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        window = self._tail + data
        self.delimiters += window.count(self._delimiter)
        self._tail = window[len(window) - len(self._delimiter) + 1 :]
        self.bytes_read += len(data)
        return data


class FormParser(FormDataParser):
    """werkzeug's form parser; its 413s say which limit they are about, and no temp file stays open."""

    def parse(
        self, stream: IO[bytes], mimetype: str, content_length: int | None, options: dict | None = None
    ) -> tuple[Any, MultiDict, MultiDict]:
        if mimetype != "multipart/form-data":
            return super().parse(stream, mimetype, content_length, options)
        reader = _CountingReader(stream, (options or {}).get("boundary", "").encode("latin-1"))
        opened: list[IO[bytes]] = []
        factory = self.stream_factory

        def open_file(*args: Any, **kwargs: Any) -> IO[bytes]:
            opened.append(factory(*args, **kwargs))
            return opened[-1]

        self.stream_factory = open_file
        try:
            return super().parse(reader, mimetype, content_length, options)  # type: ignore[arg-type]
        except RequestEntityTooLarge:
            for f in opened:
                f.close()
            # a delimiter opens each part (and one closes the form): more than the part limit were read
            if self.max_form_parts is not None and reader.delimiters > self.max_form_parts:
                raise FormLimitError(
                    f"more than {self.max_form_parts:,} multipart parts; "
                    f"send at most {current_app.config['MAX_BATCH_IMAGES']} images, and few other fields"
                ) from None
            limit = self.max_content_length
            if content_length is None and limit is not None and reader.bytes_read >= limit:
                raise  # a streamed body over the limit (one with a length was refused before parsing)
            raise FormLimitError(
                f"a multipart field without a file name is over {self.max_form_memory_size:,} bytes; "
                "send images as file parts (with a file name)"
            ) from None
        finally:
            self.stream_factory = factory


class LimitedRequest(Request):
    """The request class of the app: streamed bodies bounded like the others, precise form refusals."""

    form_data_parser_class = FormParser

    @cached_property
    def stream(self) -> IO[bytes]:
        limit = self.max_content_length
        if self.content_length is None and limit is not None and "wsgi.input_terminated" in self.environ:
            return StreamedBodyLimit(self.environ["wsgi.input"], limit, is_max=True)
        return super().stream


def check_request_head() -> None:
    """before_request: the URL and the headers within the app's limits.

    :raise 414: the request target (path and query) is longer than MAX_URL_BYTES.
    :raise 431: more than MAX_HEADERS header fields, or one longer than MAX_HEADER_BYTES.
    """
    cfg = current_app.config
    env = request.environ
    target = env.get("RAW_URI") or env.get("REQUEST_URI") or request.full_path
    if len(target) > cfg["MAX_URL_BYTES"]:
        abort(414, f"the URL is {len(target):,} bytes, over the limit of {cfg['MAX_URL_BYTES']:,}")
    headers = list(request.headers.items())
    if len(headers) > cfg["MAX_HEADERS"]:
        abort(431, f"{len(headers):,} header fields, over the limit of {cfg['MAX_HEADERS']:,}")
    for name, value in headers:
        size = len(name) + 2 + len(value)  # "Name: value"
        if size > cfg["MAX_HEADER_BYTES"]:
            abort(431, f"header {name} is {size:,} bytes, over the limit of {cfg['MAX_HEADER_BYTES']:,}")


def init_app(app: APIFlask) -> None:
    """Use the bounded request class and check every request's URL and headers first."""
    app.request_class = LimitedRequest
    app.before_request(check_request_head)
