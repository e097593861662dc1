"""serving/multipart.py against werkzeug's parser (the one the proxy used before, and a reference
implementation of RFC 7578): the same fields from the same bodies, well-formed or not."""
import io
import random

import pytest
from werkzeug.formparser import parse_form_data

from serving import multipart
from serving.errors import BadRequest, PayloadTooLarge

B = "XyZzy-boundary"
CT = f"multipart/form-data; boundary={B}"


def part(name, data, filename=None, extra=""):
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{B}\r\nContent-Disposition: {disposition}\r\n{extra}\r\n".encode() + data + b"\r\n"


def body(*parts, end=True):
    return b"".join(parts) + (f"--{B}--\r\n".encode() if end else b"")


def werkzeug(data, ctype=CT):
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": ctype, "CONTENT_LENGTH": str(len(data)),
               "wsgi.input": io.BytesIO(data)}
    _, form, files = parse_form_data(environ, silent=True, max_form_parts=multipart.MAX_PARTS)
    return ({k: [f.read() for f in files.getlist(k)] for k in files},
            {k: form.getlist(k) for k in form})


CASES = {
    "one file": body(part("images", b"\x89PNG...", "d.png")),
    "a file and a text field": body(part("images", b"abc", "d.png"), part("note", "héllo".encode())),
    "the same field twice": body(part("images", b"a", "a.png"), part("images", b"b", "b.png")),
    "a file with an empty filename": body(part("images", b"abc", "")),
    "a text field": body(part("images", b"seven")),
    "data holding CRLFs and dashes": body(part("images", b"\r\n--XyZzy\r\n-- \r\n\r\n", "d.bin")),
    "data holding the boundary without CRLF before it": body(part("images", f"x--{B}y".encode(), "d.bin")),
    "an empty file": body(part("images", b"", "d.png")),
    "a content type per part": body(part("images", b"abc", "d.png", "Content-Type: image/png\r\n")),
    "a preamble": b"preamble text\r\n" + body(part("images", b"abc", "d.png")),
    "no closing delimiter": body(part("images", b"abc", "d.png"), end=False),
    "truncated inside the data": body(part("images", b"abcdef", "d.png"), end=False)[:-5],
    "truncated inside the headers": body(part("images", b"abcdef", "d.png"), end=False)[:40],
    "a complete part, then a truncated one": body(part("a", b"1"), part("images", b"abcdef", "d.png"), end=False)[:-4],
    "an epilogue": body(part("images", b"abc", "d.png")) + b"epilogue",
    "transport padding after the delimiter": body(part("images", b"abc", "d.png")).replace(
        f"--{B}\r\n".encode(), f"--{B}  \r\n".encode(), 1),
    "a part without Content-Disposition": body(f"--{B}\r\nX-Other: 1\r\n\r\nabc\r\n".encode()),
    "a nameless part": body(f"--{B}\r\nContent-Disposition: form-data\r\n\r\nabc\r\n".encode(),
                            part("images", b"abc", "d.png")),
    "a quoted name with a semicolon": body(part("a;b", b"abc", "d.png")),
    "invalid UTF-8 in a text field": body(part("note", b"\xff\xfe ok")),
    "an empty body": b"",
    "garbage": b"garbage",
}


@pytest.mark.parametrize("name", CASES)
def test_same_fields_as_werkzeug(name):
    assert multipart.parse(CASES[name], CT) == werkzeug(CASES[name])


@pytest.mark.parametrize("ctype", ["multipart/form-data", "multipart/form-data; boundary=",
                                   "multipart/form-data; boundary=a b ", f'multipart/form-data; boundary="{B}"',
                                   f"multipart/form-data; charset=utf-8; boundary={B}"])
def test_boundary_parameter_as_werkzeug(ctype):
    data = body(part("images", b"abc", "d.png"))
    assert multipart.parse(data, ctype) == werkzeug(data, ctype)


def test_random_cuts_as_werkzeug():
    """Every prefix of a three-part body parses as werkzeug parses it (a cut anywhere: headers, data, delimiter)."""
    data = body(part("a", b"1"), part("images", b"\r\n--" + b"x" * 50, "d.png"), part("b", b"two"))
    cuts = sorted(random.Random(7).sample(range(len(data)), 60)) + [len(data)]
    for cut in cuts:
        assert multipart.parse(data[:cut], CT) == werkzeug(data[:cut]), cut


def test_too_many_parts_is_413():
    data = body(*[part(f"f{i}", b"x") for i in range(multipart.MAX_PARTS + 1)])
    with pytest.raises(PayloadTooLarge, match=r"too many parts in the multipart body \(at most 1000\)"):
        multipart.parse(data, CT)
    assert len(multipart.parse(body(*[part(f"f{i}", b"x") for i in range(multipart.MAX_PARTS)]), CT)[1]) == 1000


def test_huge_part_headers_are_400():
    data = body(part("images", b"abc", "d.png", "X-Pad: " + "a" * multipart.MAX_HEADER_BYTES + "\r\n"))
    with pytest.raises(BadRequest, match="headers are over 16384 bytes"):
        multipart.parse(data, CT)


def test_text_field_over_its_limit_is_413():
    with pytest.raises(PayloadTooLarge, match="form field 'note' is over 500000 bytes"):
        multipart.parse(body(part("note", b"x" * (multipart.MAX_FIELD_BYTES + 1))), CT)
    big = b"x" * (multipart.MAX_FIELD_BYTES + 1)
    assert multipart.parse(body(part("images", big, "d.bin")), CT) == ({"images": [big]}, {})
