"""MNIST digit classifier for Triton's python backend.

Input  `images`:       BYTES [1] per request item, the raw file bytes (JPEG, PNG, BMP, ...).
Output `mnist_result`: INT64 [1], the predicted digit.

Pre-processing lives here, not in the proxy, so that every client of Triton
(the HTTP proxy, perf_analyzer, a direct gRPC caller) gets the same answer.
"""
import io
import json
import os
import sys

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # Only present inside Triton; the training script and unit tests import preprocess() without it.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover
    pb_utils = None

import torch
from torch import nn

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_cnn.pt")
MAX_PIXELS = 25_000_000  # refuse decompression bombs before decoding them


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def _border(img):
    return np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])


def normalize_digit(gray):
    """Return a 28x28 float32 array in [0, 1], light digit on dark ground, framed the way MNIST is.

    `gray` is a 2-D uint8 array of any size. Dark-on-light input (a pen drawing, a scan) is inverted,
    judged by the border, which is background in any sensible digit picture. Like MNIST itself, the
    digit's bounding box is scaled to fit 20x20 and its centre of mass is put at the centre of 28x28.
    """
    img = gray.astype(np.float32)
    if _border(img).mean() > 127:
        img = 255.0 - img
    img = np.clip(img - np.median(_border(img)), 0, 255)  # lift a grey paper or sensor floor to black
    ink = img > 0.2 * img.max() if img.max() > 0 else np.zeros_like(img, dtype=bool)
    if not ink.any():
        return np.zeros((28, 28), np.float32)
    rows, cols = np.nonzero(ink)
    crop = img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize((nw, nh), Image.LANCZOS), np.float32)
    out = np.zeros((28, 28), np.float32)
    total = small.sum()
    if total > 0:
        cy = (small.sum(axis=1) * np.arange(nh)).sum() / total
        cx = (small.sum(axis=0) * np.arange(nw)).sum() / total
    else:
        cy, cx = nh / 2, nw / 2
    top = int(np.clip(round(14 - cy), 0, 28 - nh))
    left = int(np.clip(round(14 - cx), 0, 28 - nw))
    out[top:top + nh, left:left + nw] = small
    return out / 255.0


def preprocess(data):
    """Image file bytes -> 28x28 float32 array. Raises ValueError for anything that is not a usable image."""
    if not data:
        raise ValueError("empty image file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"image too large: {im.width}x{im.height} pixels (limit {MAX_PIXELS})")
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # A transparent drawing: put it on white, as a person sees it.
                im = im.convert("RGBA")
                ground = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(ground, im)
            gray = np.asarray(im.convert("L"), np.uint8)
    except UnidentifiedImageError:
        raise ValueError("not an image file: expected JPEG, PNG, BMP, GIF, TIFF or WebP") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a decodable image: {exc}") from None
    return normalize_digit(gray)


def load_net(device):
    net = Net()
    net.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return net.to(device).eval()


class TritonPythonModel:
    def initialize(self, args):
        # torch_device.py, in the model's folder (a folder is what gets copied): the GPU Triton assigns, or a clear
        # failure. Each model folder carries the same copy (tests/test_torch_device.py checks it).
        sys.path.insert(0, args["model_repository"])
        sys.dont_write_bytecode = True   # no __pycache__ in the model folder
        import torch_device
        self.device, where = torch_device.select(torch, args)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        self.net = load_net(self.device)
        config = json.loads(args["model_config"])
        self.out_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, "mnist_result")["data_type"])
        pb_utils.Logger.log_info(f"mnist: loaded {os.path.basename(WEIGHTS)} on {where}")

    def execute(self, requests):
        # One forward pass over every valid image of every request in the dynamic batch;
        # a bad image fails only its own request.
        tensors, owners, errors = [], [], {}
        for r, request in enumerate(requests):
            items = pb_utils.get_input_tensor_by_name(request, "images").as_numpy().reshape(-1)
            for item in items:
                try:
                    tensors.append(preprocess(bytes(item)))
                    owners.append(r)
                except ValueError as exc:
                    errors[r] = str(exc)
        logits = None
        if tensors:
            batch = torch.from_numpy(np.stack(tensors)[:, None]).to(self.device)
            with torch.inference_mode():
                logits = self.net(batch).argmax(dim=1).cpu().numpy()
        responses = []
        owners = np.asarray(owners)
        for r, request in enumerate(requests):
            if r in errors:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(errors[r], pb_utils.TritonError.INVALID_ARG)))
                continue
            digits = logits[owners == r].astype(self.out_dtype).reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("mnist_result", digits)]))
        return responses

    def finalize(self):
        self.net = None
