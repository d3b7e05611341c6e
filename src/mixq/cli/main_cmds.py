"""The core commands: run, train, capture."""

from __future__ import annotations

from pathlib import Path

import typer

from mixq.cli._common import (
    DEFAULT_ACT,
    DEFAULT_WEIGHT,
    INPUT_SHAPE,
    MODEL_HELP,
    WEIGHTS,
    check_device,
    choice,
    count,
    device_option,
    emit,
    model_source,
    out_dir,
    out_option,
    real,
)


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        out: Path | None = out_option("output folder (summary.json, plans, report.html)"),
        weight: str = typer.Option(DEFAULT_WEIGHT, help="weight format, e.g. fixed8, fixed4, sp2_4"),
        act: str = typer.Option(DEFAULT_ACT, help="activation format, e.g. ufixed8, ufixed4"),
        dataset: str = choice("fmnist-subset", "evaluation set: the shipped subset or the full test set",
                              ("fmnist-subset", "fmnist")),
        part: str = typer.Option("xc7z020", help="target FPGA part"),
        search: bool = typer.Option(True, help="hardware-aware search of a mixed plan on the part"),
        max_drop: float = real(1.0, "search: accuracy points the chosen plan may lose", 0.0, 100.0,
                               low_open=False),
    ) -> None:
        """Run the main job on the bundled default (CNV on Fashion-MNIST) and write summary/plan/report."""
        from mixq.cli._common import formats
        from mixq.hw import get_part
        from mixq.run import RunConfig
        from mixq.run import run as run_job

        formats(weight=weight, act=act)
        get_part(part)
        folder = out_dir(out, "run", "cnv")
        cfg = RunConfig(weight=weight, act=act, dataset=dataset, target_part=part, search=search,
                        search_max_drop=max_drop)
        s = run_job(folder, cfg)
        lines = [f"FP32 {s['fp32_accuracy']:.2f}%  quantized {s['quant_accuracy']:.2f}%  "
                 f"size {s['size_bytes_fp32']:,} -> {s['size_bytes_quant']:,} bytes  ({s['wall_time_s']} s)"]
        if "error" in s.get("search", {}):
            lines.append(f"search on {part}: {s['search']['error']}")
        elif "search" in s:
            sr = {r["design"]: r for r in s["search"]["compare"]}
            lines.append(f"search on {part}: " + ", ".join(
                f"{k} {r['fps']:.0f} FPS {r['test_accuracy']:.2f}%" for k, r in sr.items()))
        lines.append(f"wrote {folder / 'summary.json'}, {folder / 'plan.json'}, {folder / 'report.html'}")
        emit({"out": str(folder), "fp32_accuracy": s["fp32_accuracy"], "quant_accuracy": s["quant_accuracy"],
              "verify_exact": s["verify"]["exact"], "search": s.get("search", {}).get("chosen"),
              "wall_time_s": s["wall_time_s"]}, lines)

    @app.command()
    def train(
        out: Path | None = out_option("output folder (model.pt and model.json)"),
        epochs: int | None = count(None, "training epochs (default: the shipped weights' setting)"),
        seed: int | None = count(None, "random seed (default: the shipped weights' seed)", 0),
        batch_size: int | None = count(None, "batch size (default: the shipped weights' setting)", 2),
        lr: float | None = real(None, "peak learning rate (default: the shipped weights' setting)"),
        max_train: int | None = count(None, "use only the first N training images"),
        data_root: Path | None = typer.Option(None, help="Fashion-MNIST idx folder (default: Debian path)"),
        device: str = device_option(help="where the model trains: cpu, cuda or cuda:N (bit-identical weights "
                                         "only on the CPU)"),
    ) -> None:
        """Train the CNV model on the full Fashion-MNIST reproducibly."""
        from mixq.zoo.train import DEFAULTS, train_cnv

        check_device(device)
        folder = out_dir(out, "train", "cnv")
        metrics = train_cnv(folder / "model.pt", epochs=int(epochs if epochs is not None else DEFAULTS["epochs"]),
                            seed=int(seed if seed is not None else DEFAULTS["seed"]), data_root=data_root,
                            batch_size=int(batch_size or DEFAULTS["batch_size"]),
                            lr=float(lr if lr is not None else DEFAULTS["lr"]), max_train=max_train, device=device)
        emit({"out": str(folder), **metrics}, [*(f"{k}: {v}" for k, v in metrics.items() if not
                                                  isinstance(v, dict | list)),
                                                f"wrote {folder / 'model.pt'} and {folder / 'model.json'}"])

    @app.command("capture")
    def capture_cmd(
        model: str = typer.Argument(..., help=MODEL_HELP),
        out: Path | None = out_option("output folder (layers.json)"),
        weights: str | None = WEIGHTS,
        input_shape: str | None = INPUT_SHAPE,
    ) -> None:
        """Print a model's layers: shapes, kernels, parameters and MACs."""
        src = model_source(model, weights, input_shape)
        folder = out_dir(out, "capture", src.name)
        from mixq.graph.capture import summary_table
        from mixq.io import atomic_write_json
        from mixq.tasks.models import layer_specs

        specs = layer_specs(src)
        layers = [s.to_dict() for s in specs]
        atomic_write_json(folder / "layers.json", layers)
        emit({"model": src.name, "source": src.spec, "layers": layers, "macs": sum(s.macs for s in specs)},
             [summary_table(specs), f"wrote {folder / 'layers.json'}"])
