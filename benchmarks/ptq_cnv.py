"""PTQ on the bundled CNV model with the full Fashion-MNIST test set: mixq's recipes next to Brevitas.

Run: ``.venv/bin/python benchmarks/ptq_cnv.py`` (one intra-op thread). Needs the trained CNV
weights (``mixq.zoo.load("cnv", pretrained=True)``) and the Debian Fashion-MNIST files
(``apt-get install dataset-fashion-mnist``). ``--quick`` uses the shipped 2,000-image test
subset and short AdaRound. Writes ``benchmarks/results/ptq_cnv.json`` and ``.md``.

Data: calibration on the 1,000 bundled *training* images (``fmnist_train_calib.npz``); fidelity
(top-1 agreement with FP32, logit SQNR) and real accuracy on the 10,000 test images, fidelity
again on the 59,000 training images not used for calibration (a second, larger natural set:
agreement differences of a tenth of a point are inside the noise of 10,000 images), and for the
configurations Brevitas runs too, the paired difference in agreement over both sets with its 95%
confidence interval. Same configurations as ``ptq_mobilenetv2.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # Brevitas' progress bars (read when tqdm is imported)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mixq import data, zoo  # noqa: E402
from mixq.algorithms.ptq import AdaRoundConfig, DataFreeConfig  # noqa: E402
from mixq.run import CALIB_PATH  # noqa: E402
from ptq_common import Bench, ResultWriter, parse_cli, run_suite  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def heldout_train(calib_images: np.ndarray) -> np.ndarray:
    """The Fashion-MNIST training images that are not among the calibration images (byte-equal)."""
    train, _ = data.load_fashion_mnist("train")
    used = {im.tobytes() for im in calib_images}
    keep = np.array([im.tobytes() not in used for im in train])
    return train[keep]


def main() -> None:
    args = parse_cli(__doc__.split("\n")[0], "shipped 2,000-image test subset, short AdaRound", RESULTS)

    model = zoo.load("cnv", pretrained=True).eval()
    if args.quick:
        xt, yt = data.load_fmnist_subset()
    else:
        xt, yt = data.load_fashion_mnist("test")
    x_test, y_test = data.normalize_gray(xt), torch.as_tensor(yt)
    calib_images, _ = data.load_fmnist_subset(CALIB_PATH)
    calib = data.normalize_gray(calib_images)
    x_more = None if args.quick else data.normalize_gray(heldout_train(calib_images))
    bench = Bench(model, calib, x_test, x_test, y_test, eval_batch=500, x_more=x_more)
    print(f"CNV: {x_test.shape[0]} test images, {calib.shape[0]} calibration images (training set), "
          f"{0 if x_more is None else x_more.shape[0]} held-out training images", flush=True)

    ada = AdaRoundConfig(iterations=100 if args.quick else 1000, columns=4096, images=512, batch=256,
                         batch_size=64)
    df = DataFreeConfig(images=64, batch=64, iterations=50 if args.quick else 300)

    def first(m: torch.nn.Module) -> bool:
        return isinstance(m, torch.nn.Conv2d) and m.in_channels == 1

    def last(m: torch.nn.Module) -> bool:
        return isinstance(m, torch.nn.Linear) and m.out_features == 10

    brev, only = args.brevitas, args.keys

    write = ResultWriter(args.out, "ptq_cnv", args.quick, args.only, {
        "model": "mixq.zoo cnv, shipped Fashion-MNIST weights", "test_images": int(x_test.shape[0]),
        "calibration_inputs": int(calib.shape[0]), "brevitas": brev},
        "PTQ on CNV / Fashion-MNIST", f"Fidelity and accuracy over the {x_test.shape[0]} test images; "
        f"calibration on {calib.shape[0]} training images; second fidelity set: the "
        f"{0 if x_more is None else x_more.shape[0]} training images not used for calibration.",
        labelled="test accuracy (%)", more="held-out train")
    run_suite(bench, "cnv", first, last, ada, df, learned_round_iters=100 if args.quick else 1000,
              only=only, brevitas=brev is not None, on_rows=write)


if __name__ == "__main__":
    main()
