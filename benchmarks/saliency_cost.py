"""Cost of each saliency method per image, as a ratio to one forward pass per image, in one run.

What SaliencyEvaluation runs per batch, through the same
:class:`~medrobust.lightning_modules.saliency.attributions.Explainer`:
gradient saliency, integrated gradients (``--ig-steps``), occlusion (the default window and stride at the image
size), DeepLIFT and Grad-CAM, each on a batch of test images in eval mode, against a plain eval-mode forward of the
same batch. Rounds alternate so machine noise hits all alike. Printed: ms per image of each and the ratio to a forward
pass per image. (The stability metrics cost ``1 + stability_perturbations`` maps per image on the images they score.)

    python benchmarks/saliency_cost.py                                 # resnet18, PneumoniaMNIST 28 px, batch 32
    python benchmarks/saliency_cost.py --model test_resnet --rounds 1  # smoke run
"""

from __future__ import annotations

import argparse
import logging
import statistics

import torch
from _common import add_data_args, alternate, data_source

from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.lightning_modules.saliency.attributions import METHODS, AttributionSettings, Explainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--ig-steps", type=int, default=32, help="integrated gradients' steps (SaliencyEvaluation's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.set_defaults(batch_size=32)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    source, _, real = data_source(args)
    dm = MedMNISTDataModule(args.flag, args.size, **source, batch_size=args.batch_size)
    dm.setup("test")
    torch.manual_seed(0)
    net = ClassifierModule(args.model, dm.num_classes, dm.in_chans, dm.task).net.eval()
    test = dm.datasets["test"]
    images = test.images[: args.batch_size].float() / 255
    labels = test.labels[: args.batch_size]
    shape = tuple(images.shape[1:])
    settings = AttributionSettings(ig_steps=args.ig_steps)
    explainers = {m: Explainer(net, m, shape, settings) for m in METHODS}

    def forward() -> None:
        with torch.no_grad():
            net(images)

    jobs = {"forward": forward, **{m: (lambda e=e: e(images, labels)) for m, e in explainers.items()}}
    times = alternate(jobs, args.rounds)
    n = len(images)
    base = statistics.median(times["forward"]) / n
    window, stride = explainers["occlusion"].window
    print(
        f"data: {args.flag} {args.size}px ({'real' if real else 'synthetic'}), batch {n}; {args.model}; "
        f"integrated gradients {args.ig_steps} steps; occlusion window {window} stride {stride}; "
        f"Grad-CAM at {explainers['gradcam'].layer}; median of {args.rounds} rounds"
    )
    print(f"{'method':<22}{'ms/image':>10}{'ratio to a forward pass':>25}")
    for name, values in times.items():
        per_image = statistics.median(values) / n
        print(f"{name:<22}{1000 * per_image:>10.3f}{per_image / base:>25.1f}")


if __name__ == "__main__":
    main()
