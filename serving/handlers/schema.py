"""An api's request and response schemas (config.json) applied to one request: its body -> the model's input
tensors, the model's output tensors -> the answer's JSON values. Shared by the predict and stream handlers."""
import json

from .. import codecs, modelarts, multipart
from ..errors import BadRequest, UnsupportedMediaType
from ..http import media_type


def decode(api, info, environ, body):
    """The request body -> ({input name: tensor}, whether it is a batch, the JSON document or None), following the
    api's request schema."""
    ctype = media_type(environ)
    if ctype != api.content_type:
        raise UnsupportedMediaType(f"expected Content-Type {api.content_type}, got {ctype or 'no Content-Type'}")
    tensors, batch = {}, False
    if ctype == modelarts.MULTIPART:
        files, form = multipart.parse(body, environ.get("CONTENT_TYPE", ""))
        for f in api.inputs:
            datatype, shape = info.inputs[f.name]
            given = len(files.get(f.name, ())) + len(form.get(f.name, ()))
            if given > 1:   # refuse rather than pick one of them
                raise BadRequest(f"field {f.name!r} is given {given} times; send it once")
            if f.type == "file":
                upload = files.get(f.name)
                if upload is None:
                    if not f.required:
                        continue
                    if f.name in form:
                        raise BadRequest(f"field {f.name!r} must be a file upload, not a text field")
                    got = sorted({k for k in (*files, *form) if k})   # a nameless part is None
                    hint = f" (got {', '.join(repr(k)[1:-1][:40] for k in got[:10])}{', ...' if len(got) > 10 else ''})" \
                        if got else ""
                    raise BadRequest(f"missing file field {f.name!r}{hint}")
                tensors[f.name] = codecs.file_tensor(f.name, upload[0], shape, info.batched)
            else:
                if f.name not in form:
                    if f.required:
                        raise BadRequest(f"missing form field {f.name!r}")
                    continue
                raw = form[f.name][0]
                try:
                    value = raw if datatype == "BYTES" else json.loads(raw)
                except ValueError:
                    raise BadRequest(f"form field {f.name!r} must hold {datatype} values") from None
                tensors[f.name], is_batch = codecs.json_batch(f.name, value, datatype, shape, info.batched,
                                                              f.encoding == "base64", info.max_batch_size)
                batch = batch or is_batch
        doc = None
    else:
        doc = codecs.parse_json_body(body)
        for f in api.inputs:
            if f.name not in doc:
                if f.required:
                    raise BadRequest(f"missing field {f.name!r}")
                continue
            datatype, shape = info.inputs[f.name]
            tensors[f.name], is_batch = codecs.json_batch(f.name, doc[f.name], datatype, shape, info.batched,
                                                          f.encoding == "base64", info.max_batch_size)
            batch = batch or is_batch
    if not tensors:
        raise BadRequest("the request carries none of the fields " + ", ".join(f.name for f in api.inputs))
    return tensors, batch, doc


class Outputs:
    """The response schema of an api over its model's outputs: which outputs go out, and each one's JSON shape."""

    def __init__(self, api, info):
        self.batched = info.batched
        self.types = {f.name: (f.type, f.depth) for f in api.outputs}

    def encode(self, outputs, batch):
        """{output name: array} -> {name: JSON value}; `batch`: the request sent a batch."""
        batched = self.batched
        return {n: codecs.output_value(outputs[n], kind, batched=batched, depth=depth, batch_in=batch)
                for n, (kind, depth) in self.types.items() if n in outputs}
