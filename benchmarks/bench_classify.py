"""Benchmark of the crop classifier: training time per epoch and classification throughput.

On generated demo data (QuPath-style crops of ``--images`` images, sorted and split by image):

- train-classifier with ONE setting (the default architecture, learning rate and batch size,
  no grid search) for ``--epochs`` epochs: seconds per epoch (training + validation pass) and
  training crops per second;
- classify with the trained model (default batch size 64) on all crops of the data: crops per
  second end to end (reading, preparing, network), and the network alone on prepared batches.

The load average at the start and end is printed: other processes on the machine slow both
figures down (a lot on 2 cores, where torch's threads then wait for each other).

Usage:  python benchmarks/bench_classify.py [--images 16] [--epochs 3] [--architecture resnet18]
        [--device cpu]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="demo images to generate (default 16)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs to time (default 3)")
    parser.add_argument("--architecture", default="resnet18")
    parser.add_argument("--input-size", type=int, default=None, help="default: learned from the crops")
    parser.add_argument("--batch-size", type=int, default=64, help="classification batch size")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from orgaseg_core.classification.crops import to_unit
    from orgaseg_core.classification.networks import load_checkpoint, resolve_device
    from orgaseg_core.classification.predict import classify, predict_batch
    from orgaseg_core.classification.train import (
        DEFAULT_BATCH_SIZES,
        DEFAULT_LEARNING_RATES,
        train_classifier,
    )
    from orgaseg_core.common.images import list_images, read_image
    from orgaseg_core.data.demo import make_demo_data
    from orgaseg_core.data.sort_crops import sort_crops
    from orgaseg_core.data.split import split_dataset

    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench_classify_") as tmp:
        tmp = Path(tmp)
        make_demo_data(tmp / "demo", n_images=args.images, seed=0)
        sort_crops(tmp / "demo" / "crops", tmp / "sorted")
        split_dataset(tmp / "sorted", tmp / "split", mode="classification", seed=0)

        result = train_classifier(tmp / "split", tmp / "model", architectures=(args.architecture,),
                                  learning_rates=DEFAULT_LEARNING_RATES[:1],
                                  batch_sizes=DEFAULT_BATCH_SIZES[:1], epochs=args.epochs,
                                  patience=args.epochs, input_size=args.input_size, device=device)
        history = pd.read_csv(tmp / "model" / "history.csv")
        per_epoch = np.diff(np.concatenate([[0.0], history["seconds"].to_numpy()]))
        n_train = sum(result.counts["train"].values())
        n_val = sum(result.counts["val"].values())
        print(f"training: {args.architecture}, input {result.input_size} px, batch {DEFAULT_BATCH_SIZES[0]}, "
              f"{n_train} training + {n_val} validation crops")
        print("  seconds per epoch: " + ", ".join(f"{s:.1f}" for s in per_epoch)
              + f"  (median {np.median(per_epoch):.1f} s, {n_train / np.median(per_epoch):.0f} training crops/s "
              "including the validation pass)")

        crops = list_images(tmp / "demo" / "crops", what="crops")
        start = time.perf_counter()
        predicted = classify(result.checkpoint, tmp / "demo" / "crops", tmp / "pred",
                             batch_size=args.batch_size, device=device)
        seconds = time.perf_counter() - start
        print(f"classify: {predicted.n_classified} crops in {seconds:.2f} s = "
              f"{predicted.n_classified / seconds:.0f} crops/s end to end (batch {args.batch_size}, "
              "reading + preparing + network + CSV)")

        checkpoint = load_checkpoint(result.checkpoint)
        net = checkpoint.build(device)
        if device == "cpu":
            net = net.to(memory_format=torch.channels_last)
        units = [to_unit(read_image(p)) for p in crops]
        start = time.perf_counter()
        for i in range(0, len(units), args.batch_size):
            predict_batch(net, units[i:i + args.batch_size], input_size=checkpoint.input_size,
                          mean=checkpoint.mean, std=checkpoint.std, device=device)
        seconds = time.perf_counter() - start
        print(f"  preparing + network only: {len(units) / seconds:.0f} crops/s")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
