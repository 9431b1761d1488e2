"""Cost of fitting the Mahalanobis detector on the training split, as a ratio to one test pass, in one run.

The fit streams every training image once through the network with taps on every feature stage, adding float64
class sums and outer products; one test pass is a plain forward over the test split. Printed: median seconds of each
(alternating rounds), the ratio of the whole fit to one test pass and per image, and the memory the fit holds (its
sums) against holding every pooled feature as a one-shot fit (and pytorch-ood's Mahalanobis) does.

python benchmarks/detection_fit.py                     # ResNet-18 on PneumoniaMNIST 28 px, all 5 feature stages
python benchmarks/detection_fit.py --model convnext_atto
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from _common import add_data_args, data_source

from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.lightning_modules.detection import Mahalanobis
from medrobust.lightning_modules.features.feature_taps import feature_channels, feature_names
from medrobust.lightning_modules.nets.modes import eval_mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-train", type=int, default=None, help="fit on at most this many training images")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    source, _, real = data_source(args)
    subsample = {"train": args.max_train} if args.max_train else None
    dm = MedMNISTDataModule(args.flag, args.size, **source, eval_batch_size=args.batch_size, subsample=subsample)
    dm.setup("test")
    model = ClassifierModule(args.model, dm.num_classes, dm.in_chans, dm.task)
    net = model.net.eval()
    layers = feature_names(net.backbone)
    train, test = dm.eval_dataloader("train"), dm.eval_dataloader("test")

    def fit() -> None:
        Mahalanobis(net, layers, dm.num_classes).fit(train)

    def test_pass() -> None:
        with eval_mode(net):
            for x, _ in test:
                net(x)

    times: dict[str, list[float]] = {"test pass": [], "fit": []}
    for _ in range(args.rounds):
        for name, fn in (("test pass", test_pass), ("fit", fit)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    n_train, n_test = len(dm.datasets["train"]), len(dm.datasets["test"])
    dims = [feature_channels(net.backbone, name) or 0 for name in layers]
    held = sum(8 * (dm.num_classes * d + d * d + dm.num_classes) for d in dims)
    all_features = sum(4 * n_train * d for d in dims)
    test_s, fit_s = statistics.median(times["test pass"]), statistics.median(times["fit"])
    print(
        f"data: {args.flag} {args.size}px ({'real' if real else 'synthetic'}), {n_train} train / {n_test} test images; "
        f"{args.model}, layers {layers} ({sum(dims)} channels); {torch.get_num_threads()} threads"
    )
    print(f"{'':<22} {'seconds':>9} {'ms/image':>9}")
    print(f"{'one test pass':<22} {test_s:9.2f} {1e3 * test_s / n_test:9.3f}")
    print(f"{'Mahalanobis fit':<22} {fit_s:9.2f} {1e3 * fit_s / n_train:9.3f}")
    print(f"time ratio fit / test pass: {fit_s / test_s:.2f} (per image: {(fit_s / n_train) / (test_s / n_test):.2f})")
    print(
        f"memory (from the shapes): streaming sums {held / 2**20:.2f} MiB vs all pooled features "
        f"{all_features / 2**20:.2f} MiB "
        f"(ratio {held / all_features:.3f}; the sums do not grow with the training set)"
    )


if __name__ == "__main__":
    main()
