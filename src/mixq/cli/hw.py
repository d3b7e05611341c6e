"""`mixq estimate` and `mixq calibrate-hw`: thin wrappers over :mod:`mixq.hw` and :mod:`mixq.rtl.sweep`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mixq.cli import _common as cli


def _print(est: Any) -> None:
    if cli.json_mode():
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"{est.model} on {est.n_parts} x {est.part} ({est.arch}, {est.clock_mhz:g} MHz)")
    for col in ("resource", "used", "available", "util"):
        t.add_column(col, justify="right" if col != "resource" else "left")
    for name, u in est.utilization.items():
        avail = getattr(est.available, name)
        if avail:
            t.add_row(name, f"{getattr(est.resources, name):,.0f}", f"{avail:,.0f}", f"{100 * u:.1f}%")
    con.print(t)
    con.print(f"FPS {est.fps:,.1f}   latency {est.latency_ms:.3f} ms   {est.gops:,.1f} GOP/s   "
              f"{100 * est.peak_fraction:.1f}% of the device's peak {est.peak_macs_per_s / 1e9:,.1f} GMAC/s")
    con.print(f"bottleneck: {est.bottleneck}")
    from mixq.hw.lower import EXACT_STREAM_NOTE

    for n in est.notes:
        if n.endswith(EXACT_STREAM_NOTE):
            con.print(f"note: {n}; quantized streams (mixq quantize --residual-bits N) are narrower and cheaper")
    for c in est.cores:
        con.print(f"core {c['core']}: {c['units']} x {c['pe_kind']} units, {c['macs_per_cycle']} MAC/cycle")
    if est.partition and est.n_parts > 1:
        for i, seg in enumerate(est.partition):
            con.print(f"part {i}: {seg[0]} .. {seg[-1]} ({len(seg)} stages)")
    if not est.fits:
        for o in est.overflows:
            con.print(f"[red]does not fit: {o.message()}[/red]")


def register(app: typer.Typer) -> None:
    """Add the hardware commands to ``app``."""

    @app.command()
    def estimate(
        ctx: typer.Context,
        model: str | None = typer.Argument(None, metavar="MODEL", help=f"{cli.MODEL_HELP}; or --from"),
        from_: Path | None = cli.FROM,
        weights: str | None = cli.WEIGHTS,
        input_shape: str | None = cli.INPUT_SHAPE,
        plan: Path | None = typer.Option(None, help="plan JSON (default: a uniform plan from --weight/--act)"),
        part: str = typer.Option("xc7z020", help="FPGA part (see mixq.hw.parts)"),
        arch: str = cli.choice("streaming", "accelerator template", ("streaming", "overlay")),
        parts: int = cli.count(1, "number of parts (streaming: multi-FPGA split)"),
        weight: str = typer.Option(cli.DEFAULT_WEIGHT, help="weight format of the default plan"),
        act: str = typer.Option(cli.DEFAULT_ACT, help="activation format of the default plan"),
        fold: str = cli.choice("auto", "streaming folding", ("auto", "plan", "optimize")),
        target_fps: float | None = cli.real(None, "streaming: cheapest folding meeting this FPS"),
        link_gbps: float = cli.real(10.0, "multi-FPGA link bandwidth, Gb/s"),
        clock_mhz: float | None = cli.real(None, "override the part's clock (MHz)", 0.0, 2000.0),
        ddr_weights: bool = typer.Option(False, help="streaming: weights that do not fit on chip stream from DDR"),
        out: Path | None = typer.Option(None, "--out", help="output folder for estimate.json "
                                                            "(default runs/estimate-MODEL)"),
        save_plan: bool = typer.Option(False, help="streaming: also write plan.json with the chosen folding "
                                                   "(pe, simd) to the output folder"),
        residual_bits: int | None = cli.count(None, "price the residual streams at this many bits (2..16; default: "
                                              "the plan's, else exact)", 2, "--residual-bits", maximum=16),
    ) -> None:
        """Estimate resources, FPS, latency and the bottleneck of MODEL (or a --from artifact's model and plan) on an
        FPGA part (exit 3 if it does not fit)."""
        src = cli.resolve_source(model, from_, weights, input_shape, ctx=ctx)
        name = src.name
        cli.exclusive_with_from(from_, plan=plan is not None, weight=weight != cli.DEFAULT_WEIGHT,
                                act=act != cli.DEFAULT_ACT, residual_bits=residual_bits is not None)
        folder = cli.out_dir(out, "estimate", name)
        from mixq.errors import CheckFailed
        from mixq.hw import ArchOptions, get_part
        from mixq.hw import estimate as hw_estimate
        from mixq.io import atomic_write_json
        from mixq.tasks.models import hw_plan, layer_specs

        p = get_part(part)
        if clock_mhz is not None:
            p = p.with_(clock_mhz=clock_mhz)
        fmts = cli.formats(weight=weight, act=act) if from_ is None and plan is None else {"weight": None, "act": None}
        specs = layer_specs(src)
        qplan = hw_plan(name, specs, plan, fmts["weight"], fmts["act"], from_)
        if residual_bits is not None:
            import dataclasses

            qplan = dataclasses.replace(qplan, residual_bits=residual_bits)
        est = hw_estimate(specs, qplan, p, arch, parts=parts, fold=fold, target_fps=target_fps,
                          options=ArchOptions(link_gbps=link_gbps, ddr_weights="auto" if ddr_weights else "never"))
        atomic_write_json(folder / "estimate.json", est.to_dict())
        _print(est)
        cli.say(f"wrote {folder / 'estimate.json'}")
        if save_plan and arch == "streaming":
            from mixq.hw import apply_folding
            from mixq.plan import save_plan as write_plan

            write_plan(apply_folding(qplan, est), folder / "plan.json")
            cli.say(f"wrote {folder / 'plan.json'}")
        cli.emit({"out": str(folder), **est.summary()})
        if not est.fits:
            what = "; ".join(o.message() for o in est.overflows) or "; ".join(est.notes[-1:])
            raise CheckFailed(f"{name} does not fit {parts} x {p.name} ({arch}): {what}")

    @app.command("calibrate-hw")
    def calibrate_hw(
        jobs: int = cli.count(1, "yosys processes at a time"),
        small: bool = typer.Option(False, help="synthesize two tiny PEs and check the shipped model only"),
        refit: bool = typer.Option(False, help="re-fit from the stored synthesis records (no yosys)"),
        golden: Path | None = typer.Option(None, help="also write the synthesis records here "
                                                      "(e.g. tests/golden/hw)"),
        table: Path | None = typer.Option(None, help="write the calibration table (markdown) here"),
        out: Path | None = typer.Option(None, "--out", help="folder for coefficients.json and the records "
                                                            "(default runs/calibrate-hw; never the installed "
                                                            "package)"),
    ) -> None:
        """Re-run the PE synthesis sweep (yosys) and re-fit the hardware cost model (exit 3 off target)."""
        folder = cli.out_dir(out, "calibrate-hw")
        from mixq import progress
        from mixq.errors import CheckFailed
        from mixq.hw.fit import LUT_TARGET
        from mixq.rtl.sweep import calibrate

        with progress.task("synthesis sweep") as t:
            def step(i: int, n: int, cfg: Any) -> None:
                t.total = n
                t.advance(pe=cfg.name)

            res = calibrate(out_dir=folder, golden_dir=None if small else golden, jobs=jobs, small=small,
                            refit=refit, table_path=table, progress=step)
        by_kind: dict[str, float] = {}
        for r in res.rows:
            by_kind[r.kind] = max(by_kind.get(r.kind, 0.0), r.lut_err)
        lines = [f"{k:>11}: worst LUT error {100 * e:5.1f}%" for k, e in by_kind.items()]
        lines.append(f"worst LUT error {100 * res.max_lut_error:.1f}% (target {100 * LUT_TARGET:.0f}%), "
                     f"DSP/BRAM exact: {res.dsp_exact}")
        if not small:
            lines.append(f"wrote {res.coefficients_path} and {res.records_path}")
        cli.emit({"out": str(folder), "worst_lut_error": res.max_lut_error, "dsp_exact": res.dsp_exact,
              "worst_lut_error_by_kind": by_kind}, lines)
        if res.max_lut_error > LUT_TARGET or not res.dsp_exact:
            raise CheckFailed(f"calibrate-hw: worst LUT error {100 * res.max_lut_error:.1f}% (target "
                              f"{100 * LUT_TARGET:.0f}%), DSP/BRAM exact: {res.dsp_exact}")
