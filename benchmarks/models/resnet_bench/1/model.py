"""Benchmark model: a small ResNet-like CNN (seeded random weights) standing for a compute-heavy model.

The GPU where Triton gives one, else the CPU. The output is deterministic for a given input, so the bench can
check every answer against the first.
"""
import sys

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


def resnet_like():
    """ResNet-18's layout at a quarter of its width: about 0.15 GFLOP per 224x224 image."""
    w = [16, 32, 64, 128]
    layers = [nn.Conv2d(3, w[0], 7, 2, 3, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = w[0]
    for i, c in enumerate(w):
        layers += [Block(cin, c, 1 if i == 0 else 2), Block(c, c, 1)]
        cin = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


class TritonPythonModel:
    def initialize(self, args):
        # torch_device.py, in the model's folder (a link to the shipped models' copy).
        sys.path.insert(0, args["model_repository"])
        sys.dont_write_bytecode = True   # a __pycache__ beside the models would stop Triton (not a model)
        import torch_device
        self.device, where = torch_device.select(torch, args)
        torch.manual_seed(0)
        self.net = resnet_like().eval().to(self.device)
        pb_utils.Logger.log_info(f"resnet_bench on {where}")

    def execute(self, requests):
        batch = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        sizes = [len(b) for b in batch]
        with torch.inference_mode():
            x = torch.from_numpy(np.concatenate(batch)).to(self.device)
            out = self.net(x).float().cpu().numpy()
        responses, at = [], 0
        for n in sizes:
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", out[at:at + n])]))
            at += n
        return responses
