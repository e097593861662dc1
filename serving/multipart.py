"""multipart/form-data bodies -> their fields. Pure functions over the whole body: no streams, no Flask.

The body has been read whole (it is capped at MAX_BODY_MB before it is read), so the parts are found with
`bytes.find` (C) and sliced out once: no per-chunk state machine. What it keeps from werkzeug's parser, which the
proxy used before and whose answers the tests pin:
- a part is a file when its Content-Disposition has a `filename` parameter (even an empty one), else a text field
  (decoded as UTF-8, bad bytes replaced);
- a body cut off before its closing delimiter, with no boundary or an invalid one, or with a part that has no
  Content-Disposition reads as no fields at all (a truncated upload is then a missing field);
- at most MAX_PARTS parts (413 past it), a text field of at most MAX_FIELD_BYTES.
What it adds: a part's header block over MAX_HEADER_BYTES is a 400 naming the limit.
"""
import re

from .errors import BadRequest, PayloadTooLarge

MAX_PARTS = 1000
MAX_FIELD_BYTES = 500_000
MAX_HEADER_BYTES = 16384

# RFC 2046: 1 to 70 characters, no trailing space (werkzeug allows up to 200; so do we).
_BOUNDARY = re.compile(rb"^[ -~]{0,199}[!-~]$")
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))')


def boundary(content_type):
    """The boundary parameter of a Content-Type header (bytes), or None."""
    for key, quoted, plain in _PARAM.findall(";" + content_type.partition(";")[2]):
        if key.lower() == "boundary":
            value = (quoted.replace('\\"', '"').replace("\\\\", "\\") if quoted else plain.strip()).encode("latin-1",
                                                                                                         "replace")
            return value if _BOUNDARY.match(value) else None
    return None


def _disposition(headers):
    """(name, is_file) from a part's header block; (None, None) without a Content-Disposition."""
    for line in headers.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == b"content-disposition":
            text = value.decode("utf-8", "replace")
            name, is_file = None, False
            for key, quoted, plain in _PARAM.findall(text.partition(";")[1] + text.partition(";")[2]):
                key = key.lower()
                if key == "name":
                    name = quoted.replace('\\"', '"').replace("\\\\", "\\") if quoted else plain.strip()
                elif key in ("filename", "filename*"):
                    is_file = True
            return name, is_file
    return None, None


def parse(body, content_type):
    """The fields of a multipart body: ({name: [file bytes, ...]}, {name: [text, ...]}). Raises PayloadTooLarge past
    MAX_PARTS parts or a text field over MAX_FIELD_BYTES, BadRequest for a header block over MAX_HEADER_BYTES."""
    files, form = {}, {}
    mark = boundary(content_type)
    if mark is None:
        return files, form
    delim = b"--" + mark
    at = body.find(delim)
    if at < 0 or (at > 0 and body[at - 2:at] != b"\r\n"):
        return files, form
    sep, end, parts = b"\r\n" + delim, len(body), 0
    at += len(delim)
    while True:
        if body.startswith(b"--", at):   # the closing delimiter
            break
        line_end = body.find(b"\r\n", at)   # the rest of the delimiter line: transport padding only
        if line_end < 0 or body[at:line_end].strip(b" \t"):
            return {}, {}   # cut off, or not a delimiter line
        start = line_end + 2
        if body.startswith(b"\r\n", start):   # a part with no headers
            head, data_at = b"", start + 2
        else:
            head_end = body.find(b"\r\n\r\n", start, start + MAX_HEADER_BYTES + 4)
            if head_end < 0:
                if end - start > MAX_HEADER_BYTES and body.find(b"\r\n\r\n", start) >= 0:
                    raise BadRequest(f"a multipart part's headers are over {MAX_HEADER_BYTES} bytes")
                return {}, {}   # cut off inside its headers
            head, data_at = body[start:head_end], head_end + 4
        data_end = body.find(sep, data_at)
        if data_end < 0:
            return {}, {}   # cut off inside its data
        parts += 1
        if parts > MAX_PARTS:
            raise PayloadTooLarge(f"too many parts in the multipart body (at most {MAX_PARTS})")
        name, is_file = _disposition(head)
        if is_file is None:   # werkzeug refuses the whole body then, silently
            return {}, {}
        if is_file:
            files.setdefault(name, []).append(body[data_at:data_end])
        else:
            if data_end - data_at > MAX_FIELD_BYTES:
                raise PayloadTooLarge(f"form field {name!r} is over {MAX_FIELD_BYTES} bytes; send large data as a "
                                      "file part")
            form.setdefault(name, []).append(body[data_at:data_end].decode("utf-8", "replace"))
        at = data_end + len(sep)
    return files, form
