"""The core commands: run, train, capture."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        out: Path = typer.Option(Path("runs/demo"), help="output folder"),
        weight: str = typer.Option("fixed8", help="weight format, e.g. fixed8, fixed4, sp2_4"),
        act: str = typer.Option("ufixed8", help="activation format, e.g. ufixed8, ufixed4"),
        dataset: str = typer.Option("fmnist-subset", help="fmnist-subset (shipped) or fmnist (full test set)"),
        part: str = typer.Option("xc7z020", help="target FPGA part"),
        search: bool = typer.Option(True, help="hardware-aware search of a mixed plan on the part"),
        max_drop: float = typer.Option(1.0, help="search: accuracy points the chosen plan may lose"),
        quiet: bool = typer.Option(False, help="no progress bar"),
    ) -> None:
        """Run the main job on the bundled default (CNV on Fashion-MNIST) and write summary/plan/report."""
        from mixq.run import RunConfig
        from mixq.run import run as run_job

        cfg = RunConfig(weight=weight, act=act, dataset=dataset, target_part=part, search=search,
                        search_max_drop=max_drop)
        s = run_job(out, cfg, progress=not quiet)
        typer.echo(f"FP32 {s['fp32_accuracy']:.2f}%  quantized {s['quant_accuracy']:.2f}%  "
                   f"size {s['size_bytes_fp32']:,} -> {s['size_bytes_quant']:,} bytes  ({s['wall_time_s']} s)")
        if "error" in s.get("search", {}):
            typer.echo(f"search on {part}: {s['search']['error']}")
        elif "search" in s:
            sr = {r["design"]: r for r in s["search"]["compare"]}
            typer.echo(f"search on {part}: " + ", ".join(
                f"{k} {r['fps']:.0f} FPS {r['test_accuracy']:.2f}%" for k, r in sr.items()))
        typer.echo(f"wrote {out / 'summary.json'}, {out / 'plan.json'}, {out / 'report.html'}")

    @app.command()
    def train(
        out: Path = typer.Option(Path("cnv_fmnist.pt"), help="where to write the state dict"),
        epochs: int | None = typer.Option(None, help="training epochs (default: the shipped weights' setting)"),
        seed: int | None = typer.Option(None, help="random seed (default: the shipped weights' seed)"),
        data_root: Path | None = typer.Option(None, help="Fashion-MNIST idx folder (default: Debian path)"),
    ) -> None:
        """Train the CNV model on the full Fashion-MNIST reproducibly."""
        from mixq.zoo.train import DEFAULTS, train_cnv

        metrics = train_cnv(out, epochs=int(epochs if epochs is not None else DEFAULTS["epochs"]),
                            seed=int(seed if seed is not None else DEFAULTS["seed"]), data_root=data_root)
        typer.echo(json.dumps(metrics, indent=2))

    @app.command("capture")
    def capture_cmd(
        model: str = typer.Argument(..., help="zoo model name"),
        json_out: Path | None = typer.Option(None, "--json", help="write the layer list as JSON"),
    ) -> None:
        """Print a model's layers: shapes, kernels, parameters and MACs."""
        from mixq import zoo
        from mixq.graph.capture import capture, summary_table
        from mixq.io import atomic_write_json

        specs = capture(zoo.load(model), zoo.input_shape(model))
        typer.echo(summary_table(specs))
        if json_out is not None:
            atomic_write_json(json_out, [s.to_dict() for s in specs])

