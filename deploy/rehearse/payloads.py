"""Phase 3's requests: built from each api's request schema as the console's Prediction tab and a client would.

File fields come from SAMPLES ("field=path ..."). Other required fields take the schema's `examples` or `default`
where it gives one, else a value of the declared type, shaped as the model's input; optional ones are sent only when
the schema gives such a value (read from Triton's metadata through the
KServe v2 endpoints on the same port).
"""
import base64
import json
import os


def parse_samples(text):
    """SAMPLES="images=a.jpg texts=b.txt" -> {"images": "a.jpg", ...}; a path may also stand alone for the one
    file field."""
    samples = {}
    for item in (text or "").split():
        name, sep, path = item.partition("=")
        samples[name if sep else ""] = path if sep else name
    return samples


def _one(schema):
    """A schema that allows one item or a batch: the one item (what a console user sends)."""
    kind = schema.get("type")
    if isinstance(kind, list):
        return dict(schema, type=next((k for k in kind if k != "array"), "array"))
    if kind == "array" and isinstance(schema.get("items"), dict) and "anyOf" in schema["items"]:
        return dict(schema, items=schema["items"]["anyOf"][0])
    return schema


def value(schema, dims):
    """A value that fits `schema` and the tensor item dims `dims` (-1 counts as 1)."""
    schema = _one(schema)
    for key in ("examples", "default", "example"):
        if key in schema:
            found = schema[key]
            return found[0] if key == "examples" and isinstance(found, list) and found else found
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "array":
        n = dims[0] if dims and dims[0] > 0 else 1
        return [value(schema.get("items") or {}, dims[1:]) for _ in range(n)]
    if kind == "object":
        props = schema.get("properties") or {}
        wanted = schema.get("required", list(props))
        return {k: value(props[k], []) for k in wanted if k in props}
    return {"string": "rehearsal", "integer": 1, "number": 0.5, "boolean": True}.get(kind, "rehearsal")


def build(api, model_inputs, samples):
    """-> ({"json": body} or {"files": ..., "data": ...}, missing) where `missing` names the fields that need a sample.
    model_inputs: {input name: item dims} (may be empty when the metadata is not at hand)."""
    request = api["request"]
    props = request["data"]["properties"]
    required = request["data"].get("required", list(props))
    multipart = request.get("Content-type") == "multipart/form-data"
    files = [n for n, s in props.items() if s.get("type") == "file"]
    missing, sent_files, form, body = [], {}, {}, {}
    for name, schema in props.items():
        sample = samples.get(name) or (samples.get("") if len(files) == 1 and name in files else None)
        if schema.get("type") == "file" or schema.get("contentEncoding") == "base64":
            if sample is None:
                if name in required:
                    missing.append(name)
                continue
            with open(sample, "rb") as f:
                data = f.read()
            if schema.get("type") == "file":
                sent_files[name] = (os.path.basename(sample), data)
            else:
                (form if multipart else body)[name] = base64.b64encode(data).decode()
            continue
        if name not in required and not any(k in schema for k in ("examples", "default", "example")):
            continue   # an optional field is left out unless the schema says what to send
        v = value(schema, model_inputs.get(name, []))
        if multipart:
            form[name] = v if isinstance(v, str) else json.dumps(v)
        else:
            body[name] = v
    if multipart:
        return {"files": sent_files, "data": form}, missing
    return {"json": body}, missing


def malformed(api):
    """A body that no api accepts: truncated JSON for a JSON api, a multipart body missing its fields otherwise."""
    if api["request"].get("Content-type") == "multipart/form-data":
        return {"files": {"rehearsal-unknown-field": ("x.bin", b"\x00\x01")}}
    return {"data": b'{"truncated": ', "headers": {"Content-Type": "application/json"}}
