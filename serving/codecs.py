"""HTTP bodies <-> tensors. Pure functions: no Flask, no gRPC.

Requests:  multipart file -> BYTES [1];  JSON string -> BYTES (base64-decoded where the schema says
           "contentEncoding": "base64");  JSON numbers/arrays -> the input's dtype and shape;  a base64 JSON
           string on a numeric input -> its raw little-endian values (a whole tensor without JSON numbers).
Responses: one element -> a JSON scalar, several -> a list (or a list always, where the schema says "array");
           BYTES -> str. One item in, one item out; a batch in, a batch out (a batch of one too). Numbers are written
           straight from numpy by orjson: float32 at its shortest round-trip repr (0.14285715, not
           0.1428571492433548); NaN and infinities, which JSON cannot hold, as null.
"""
import binascii
import json
import struct
import warnings

import numpy as np
import orjson

from .errors import BadRequest

# A JSON number beyond a float input's range is refused with a 400 (json_batch): numpy's warning for the cast that
# finds it is not news. Filtered once here, so that the common case pays for no errstate context per request.
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning, __name__)

# Triton datatype -> numpy dtype (BYTES is object, holding Python bytes).
DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}


def request_shape(shape, batched):
    """The concrete shape of one request: the batch dimension (and any other -1) becomes 1."""
    return [1 if d < 0 else d for d in shape] if batched else list(shape)


def file_tensor(name, data, shape, batched):
    """One uploaded file -> a BYTES tensor holding its raw bytes (check_binding made sure the input is BYTES)."""
    if not data:
        raise BadRequest(f"file field {name!r} is empty")
    return np.array([data], dtype=np.object_).reshape(request_shape(shape, batched))


def _to_bytes(name, value, b64):
    if not isinstance(value, str):
        raise BadRequest(f"field {name!r} must hold strings, got {type(value).__name__}")
    if not b64:
        return value.encode("utf-8")
    try:
        # strict_mode checks the alphabet and the padding in C; b64decode(validate=True) runs a regex over the
        # whole string first, which cost more than the decoding on large tensors.
        data = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"field {name!r} is not valid base64") from None
    if not data:
        raise BadRequest(f"field {name!r} is empty")
    return data


def json_tensor(name, value, datatype, shape, batched, b64=False, max_batch=0):
    """A JSON value -> a tensor of the input's datatype and shape, or BadRequest saying what is wrong."""
    return json_batch(name, value, datatype, shape, batched, b64, max_batch)[0]


def json_batch(name, value, datatype, shape, batched, b64=False, max_batch=0):
    """A JSON value -> (tensor, whether the value was a batch of items), or BadRequest saying what is wrong.

    Where one batch item is a single element (shape [1]), a JSON list of N values is a batch of N."""
    if b64 and datatype != "BYTES":
        return _fit(name, _binary_tensor(name, _to_bytes(name, value, True), datatype, shape, batched), shape, batched,
                    max_batch)
    if datatype == "BYTES":
        if isinstance(value, list):
            flat = np.array(value, dtype=np.object_)
            if flat.dtype != np.object_ or any(isinstance(v, list) for v in flat.reshape(-1)):
                raise BadRequest(f"field {name!r} must be a regular array of strings")
            arr = np.vectorize(lambda v: _to_bytes(name, v, b64), otypes=[np.object_])(flat) if flat.size else flat
        else:
            arr = np.empty((), dtype=np.object_)   # one string: one item, not a batch
            arr[()] = _to_bytes(name, value, b64)
    else:
        types = _types(value)
        if not types <= _NUMBERS:
            if types - _NUMBERS - {bool}:   # str, dict, None
                raise BadRequest(f"field {name!r} must hold numbers ({datatype})")
            if datatype != "BOOL":
                raise BadRequest(f"field {name!r} must hold numbers ({datatype}), not booleans")
        try:
            arr = np.asarray(value)
        except ValueError:
            raise BadRequest(f"field {name!r} must be a regular (non-ragged) array") from None
        if arr.dtype == np.object_:
            raise BadRequest(f"field {name!r} must be a regular (non-ragged) array")
        dtype = DTYPES[datatype]
        if np.issubdtype(dtype, np.integer) and arr.size:
            if not np.issubdtype(arr.dtype, np.integer) and not np.all(np.mod(arr, 1) == 0):
                raise BadRequest(f"field {name!r} must hold integers ({datatype})")
            bounds = np.iinfo(dtype)
            if arr.min() < bounds.min or arr.max() > bounds.max:
                raise BadRequest(f"field {name!r} does not fit {datatype}")
        try:
            cast = arr.astype(dtype)   # an overflow becomes infinity (its warning is silenced above), refused below
        except (OverflowError, ValueError, TypeError):
            raise BadRequest(f"field {name!r} does not fit {datatype}") from None
        if cast.dtype.kind == "f" and cast.size and not np.isfinite(cast).all():
            # a JSON number beyond the type's range would reach the model as infinity
            bound = float(np.finfo(dtype).max)
            raise BadRequest(f"field {name!r} does not fit {datatype}: its values must lie within "
                             f"+-{bound:.4g}")
        arr = cast
    return _fit(name, arr, shape, batched, max_batch)


def _binary_tensor(name, data, datatype, shape, batched):
    """Raw little-endian values (a base64 JSON string) -> one item of a numeric input, whose shape must be fixed."""
    item = list(shape[1:] if batched else shape)
    dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
    if any(d < 0 for d in item):
        raise BadRequest(f"field {name!r}: binary data needs a fixed shape, the model's is {item}")
    expect = int(np.prod(item)) * dtype.itemsize
    if len(data) != expect:
        raise BadRequest(f"field {name!r} must hold {expect} bytes ({datatype} {item}, little-endian), "
                         f"got {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(item)


_NUMBERS = {int, float}


def _types(value):
    """The types of the leaves of a JSON value (lists walked), in one pass: a set per list, not a call per element."""
    if type(value) is not list:
        return {type(value)}
    types = set(map(type, value))
    if list in types:
        types.discard(list)
        for v in value:
            if type(v) is list:
                types |= _types(v)
    return types


def _fit(name, arr, shape, batched, max_batch=0):
    """Give `arr` the model's shape: a scalar fills a one-element input, a list of N fills N one-element items, and
    the batch dimension is added to one item. Returns (tensor, whether a batch was given)."""
    item = list(shape[1:] if batched else shape)
    given = list(arr.shape)
    is_batch = False
    if arr.ndim == 0:
        arr = arr.reshape([1] * len(item))
    elif batched and item == [1] and arr.ndim == 1:
        if arr.shape[0] == 0:
            raise BadRequest(f"field {name!r} is empty")
        arr, is_batch = arr[:, None], True
    if batched and arr.ndim == len(item):
        arr = arr[None]
    elif batched:
        is_batch = True
    if batched and max_batch and arr.shape[0] > max_batch:
        raise BadRequest(f"field {name!r} holds {arr.shape[0]} items; at most {max_batch} per request")
    if arr.ndim != len(shape) or any(w >= 0 and w != a for w, a in zip(shape, arr.shape)):
        # In the user's terms: the shape they sent, against one item's shape (and a batch's, where there is one).
        expect = ["n" if w < 0 else w for w in item]
        also = f" (or a batch of them, [n, {', '.join(map(str, expect))}])" if batched and item != [1] else ""
        raise BadRequest(f"field {name!r} must have shape {expect}{also}, got {given}")
    return arr, is_batch


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def parse_json_body(raw):
    if not raw:
        raise BadRequest("empty request body: expected a JSON object")
    try:
        doc = orjson.loads(raw)   # refuses NaN, Infinity, invalid UTF-8 and deep nesting, as below
    except orjson.JSONDecodeError:
        doc = _parse_slowly(raw)   # Python's parser: the same refusals with the messages users see, or integers
    if not isinstance(doc, dict):   # wider than 64 bits, which orjson does not take and a codec below refuses
        raise BadRequest("JSON body must be an object of named fields")
    return doc


def _parse_slowly(raw):
    try:
        # NaN and Infinity are not JSON, although Python's parser takes them; refuse them rather than send them on.
        doc = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:   # Python's parser recurses per level
        raise BadRequest("malformed JSON body: nested too deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None
    return doc


def output_value(arr, schema_type, *, batched, depth=None, batch_in=False):
    """One Triton output -> its JSON value (numpy arrays and scalars, which dumps() writes directly).

    `batched`: the model has a batch dimension; `depth`: how deep the response schema nests the value; `batch_in`:
    the request sent a batch. One item in, one item out: the batch dimension goes. A batch in (`batch_in`), a batch out, a batch of one too;
    so does an output whose schema nests as deep as the output is (an array of vectors stays an array of vectors).
    An item of one element is a scalar, unless the schema says "array"."""
    if arr.dtype == np.object_:
        if arr.size == 1 and schema_type != "array" and not depth and not (batched and batch_in):
            v = arr.reshape(-1)[0]   # one string (a token of a stream): no vectorize
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        arr = np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b),
                           otypes=[np.object_])(arr)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)   # the same values; orjson writes float32 arrays
    if batched and arr.ndim >= 1 and (batch_in or arr.shape[0] != 1 or (depth is not None and depth >= arr.ndim)):
        if arr.ndim > 1 and arr.size == arr.shape[0] and (schema_type != "array" or depth == 1) and \
                (depth or 0) < arr.ndim:
            arr = arr.reshape(arr.shape[0])   # a batch of one-element items: a list of scalars
        return arr.tolist() if arr.dtype == np.object_ else arr
    if batched and arr.ndim >= 1 and arr.shape[0] == 1:
        arr = arr[0]
    if schema_type == "array":
        arr = arr.reshape(1) if arr.ndim == 0 else arr
    elif arr.size == 1:
        arr = arr.reshape(-1)[0]
        return arr.item() if isinstance(arr, np.generic) and arr.dtype == np.object_ else arr
    return arr.tolist() if arr.dtype == np.object_ else arr


def dumps(doc):
    """A JSON answer as bytes, numpy values written directly."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def to_raw(arr, datatype):
    """A tensor -> the bytes of gRPC's raw_input_contents: little-endian values, or for BYTES each element as
    a 4-byte little-endian length followed by its bytes (the KServe v2 binary layout)."""
    if datatype == "BYTES":
        items = arr.reshape(-1).tolist()
        if len(items) == 1:
            return struct.pack("<I", len(items[0])) + items[0]
        return b"".join(struct.pack("<I", len(b)) + b for b in items)
    return arr.astype(DTYPES[datatype], copy=False).tobytes()


def raw_view(arr, datatype):
    """to_raw without the copy where there is none to make: a contiguous numeric tensor's own bytes."""
    if datatype == "BYTES":
        return to_raw(arr, datatype)
    arr = np.ascontiguousarray(arr.astype(DTYPES[datatype], copy=False))
    return memoryview(arr).cast("B") if arr.size else b""


def from_raw(raw, datatype, shape):
    """raw_output_contents -> a numpy array of the output's datatype and shape (BYTES elements as bytes)."""
    if datatype != "BYTES":
        return np.frombuffer(raw, dtype=DTYPES[datatype]).reshape(shape)
    items, at = [], 0
    while at < len(raw):
        (n,) = struct.unpack_from("<I", raw, at)
        items.append(raw[at + 4:at + 4 + n])
        at += 4 + n
    return np.array(items, dtype=np.object_).reshape(shape)
