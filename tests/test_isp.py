"""The AI-ISP denoising task (mixq.tasks.isp, mixq isp): photos split by photo, the Poisson-Gaussian noise
model, PSNR / SSIM, the trainer's objective, quantized denoisers on the integer engine, the command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixq.algorithms.qat.modules import qat_from_quantized
from mixq.cli.isp import train_float
from mixq.data import natural_photo_paths
from mixq.engine import verify
from mixq.tasks import isp
from mixq.zoo.unet import unet

pytestmark = pytest.mark.usefixtures("one_thread")

MIXQ = [sys.executable, "-m", "mixq.cli"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(MIXQ + args, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_held_out_split_is_disjoint_by_photo() -> None:
    photos = isp.load_photos()
    assert len(photos) >= 8  # the natural photos at least (28 with foolbox's ImageNet images)
    train, test = isp.split_photos(len(photos))
    assert not set(train) & set(test) and sorted(train + test) == list(range(len(photos)))
    assert len(test) == -(-len(photos) // isp.TEST_EVERY)
    # every training patch is a crop of a training photo (checked by value), none of a test photo
    patches = isp.random_patches([photos[i] for i in train], 6, 16, seed=1)
    for p in patches:
        hits = [i for i, ph in enumerate(photos) if _contains(ph, p)]
        assert hits and set(hits) <= set(train)


def _contains(photo: torch.Tensor, patch: torch.Tensor) -> bool:
    """Whether ``patch`` is a crop of ``photo`` under one of its flips / rotations (candidates: the places
    whose pixel equals the patch's corner pixel)."""
    s = patch.shape[-1]
    for k in range(4):
        for flip in (False, True):
            q = torch.rot90(patch, -k, (1, 2))
            q = q.flip(-1) if flip else q
            ys, xs = torch.nonzero((photo == q[:, :1, :1]).all(0), as_tuple=True)
            for y, x in zip(ys.tolist(), xs.tolist(), strict=True):
                win = photo[:, y : y + s, x : x + s]
                if win.shape == q.shape and torch.equal(win, q):
                    return True
    return False


def test_noise_model_mean_and_variance() -> None:
    x = torch.full((1, 3, 256, 256), 0.3)
    for name, lv in isp.NOISE_LEVELS.items():
        y = isp.noisy_set(x, name, seed=0)
        assert float(y.mean()) == pytest.approx(0.3, abs=2e-3)
        assert float(y.var()) == pytest.approx(lv.a * 0.3 + lv.b**2, rel=0.03)
    assert torch.equal(isp.noisy_set(x, "mid", 5), isp.noisy_set(x, "mid", 5))  # seeded


def test_psnr_and_ssim_on_known_cases() -> None:
    ref = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(isp.psnr((ref + 0.01).clamp(0, 1), ref).min()) > 39.0
    assert isp.psnr(torch.full((1, 3, 8, 8), 0.5), torch.full((1, 3, 8, 8), 0.25)).item() == pytest.approx(
        10 * np.log10(16))
    assert isp.ssim(ref, ref).tolist() == pytest.approx([1.0, 1.0])
    noisy = isp.noisy_set(ref, "high", 1)
    assert float(isp.ssim(noisy, ref).max()) < 0.9
    skm = pytest.importorskip("skimage.metrics")
    for i in range(2):
        a, b = noisy[i].clamp(0, 1).permute(1, 2, 0).double().numpy(), ref[i].permute(1, 2, 0).double().numpy()
        want = skm.structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
        assert float(isp.ssim(noisy[i : i + 1], ref[i : i + 1])) == pytest.approx(want, abs=1e-5)


def test_gaussian_baseline_denoises_a_photo() -> None:
    clean = isp.center_crops(isp.load_photos()[:2], 64)
    noisy = isp.noisy_set(clean, "mid", 0)
    sigma = isp.best_gauss_sigma(clean, noisy)
    assert sigma in isp.GAUSS_SIGMAS
    assert float(isp.psnr(isp.gaussian_filter(noisy, sigma), clean).mean()) > float(isp.psnr(noisy, clean).mean()) + 1
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert torch.allclose(isp.gaussian_filter(flat, 1.0), flat)


def test_objective_is_the_mse_and_a_short_run_reduces_it() -> None:
    torch.manual_seed(0)
    net = unet(width=4, depth=2)
    clean = isp.random_patches(isp.load_photos()[:4], 96, 16, seed=0)
    torch.manual_seed(3)
    logits = isp.DenoiseObjective(net, [isp.NOISE_LEVELS["mid"]])(clean[:8])
    torch.manual_seed(3)
    torch.randint(0, 1, (8,))  # the level draw of the objective
    with torch.no_grad():
        mse = ((net(isp.add_noise(clean[:8], 0.01, 0.02)) - clean[:8]) ** 2).flatten(1).mean(1).mean()
    ce = F.cross_entropy(logits, isp.train_labels(clean[:8])).detach()
    assert float(ce) == pytest.approx(float(mse), rel=1e-4)
    levels = list(isp.NOISE_LEVELS.values())
    before = isp.objective_loss(net, clean, levels, seed=7)
    res = train_float(net, clean, epochs=3, batch_size=16, lr=3e-3, seed=0, threads=1, progress=False)
    assert res.steps == 18
    assert isp.objective_loss(net, clean, levels, seed=7) < 0.7 * before


def test_quantized_denoiser_is_bit_exact_on_the_integer_engine() -> None:
    torch.manual_seed(0)
    net = unet(width=4, depth=2).eval()
    clean = isp.random_patches(isp.load_photos()[:4], 24, 16, seed=0)
    calib = isp.calibration_inputs(clean, 0)
    assert float(calib.min()) < 0  # noisy inputs go below 0: the first layer's input format is signed
    for name in ("w4a4", "w2a2"):
        q = isp.ptq_denoiser(net, name, calib)
        rep = verify(q, calib[:4])
        assert rep["exact"] and rep["mismatching_outputs"] == 0


def test_cli_errors_and_denoise_a_shipped_photo(tmp_path: Path) -> None:
    r = _run(["isp", "train", "--width", "0", "--out", str(tmp_path / "t")], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--width" in r.stderr
    assert not (tmp_path / "t").exists()
    r = _run(["isp", "denoise", str(tmp_path / "nosuch.png")], tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "nosuch.png" in r.stderr
    run = tmp_path / "run"
    r = _run(["-q", "isp", "train", "--out", str(run), "--width", "4", "--patches", "64", "--epochs", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (run / "model.pt").is_file() and (run / "model.json").is_file()
    photo = next(p for p in natural_photo_paths() if p.name == "chelsea.png") if natural_photo_paths() else None
    if photo is None:
        pytest.skip("scikit-image photos not installed")
    out = tmp_path / "cat.png"
    r = _run(["isp", "denoise", str(photo), "--weights", str(run / "model.pt"), "--out", str(out), "--noise", "mid"],
             tmp_path)
    assert r.returncode == 0, r.stderr
    from PIL import Image

    with Image.open(out) as im:
        assert im.size == (448, 300)  # chelsea is 451 x 300: cropped to a multiple of 4
    assert (tmp_path / "cat-noisy.png").is_file() and "PSNR" in r.stdout
    r = _run(["isp", "eval", "--weights", str(tmp_path / "none.pt"), "--out", str(tmp_path / "e")], tmp_path)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "none.pt" in r.stderr


def test_qat_starts_from_a_ptq_recipe_and_stays_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = unet(width=4, depth=2).eval()
    clean = isp.random_patches(isp.load_photos()[:4], 32, 16, seed=0)
    calib = isp.calibration_inputs(clean[:24], 0)
    ptq = isp.ptq_denoiser(net, "w4a4", calib, "dfq")
    start = qat_from_quantized(ptq).eval()
    with torch.no_grad():  # before training, the QAT model is the PTQ model it starts from
        torch.testing.assert_close(start(calib[:4]), ptq(calib[:4]), atol=1e-5, rtol=0)
    q = isp.qat_denoiser(net, "w4a4", clean, calib, isp.QatSettings(epochs=1, batch_size=16, init="dfq"), tmp_path)
    rep = verify(q, calib[:4])
    assert rep["exact"] and rep["mismatching_outputs"] == 0
    with pytest.raises(isp.OptionError):
        isp.qat_denoiser(net, "w4a4", clean, calib, isp.QatSettings(epochs=1, init="nope"), tmp_path)


def test_decoder_convs_read_an_unsigned_concat_with_the_relu_after_upsampling() -> None:
    torch.manual_seed(0)
    clean = isp.random_patches(isp.load_photos()[:4], 16, 16, seed=0)
    calib = isp.calibration_inputs(clean, 0)
    signed = {}
    for relu in (True, False):
        net = unet(width=4, depth=2, up_relu=relu).eval()
        with torch.no_grad():  # the upsampling path ends in the ReLU: both concat halves are >= 0
            ups = [net.up[i](torch.randn(2, 8 * 2**i, 4, 4)) for i in range(2)]
        assert all(bool((u >= 0).all()) for u in ups) == relu
        plan = isp.precision_plan("w4a4", net, calib)
        signed[relu] = {n: bool(lp.act.signed) for n, lp in plan.layers.items() if lp.act is not None}
    # the noisy image is signed (8 bits); every 4-bit input is unsigned with the ReLU, the concats signed without
    assert {n for n, s in signed[True].items() if s} == {"enc.0.0", "skip"}
    assert {n for n, s in signed[False].items() if s} == {"enc.0.0", "skip", "dec.0.0", "dec.1.0"}


def test_distillation_objective_mixes_clean_and_teacher_targets(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net, teacher = unet(width=4, depth=2), unet(width=4, depth=2).eval()
    clean = isp.random_patches(isp.load_photos()[:4], 32, 16, seed=0)
    obj = isp.DenoiseObjective(net, [isp.NOISE_LEVELS["mid"]], teacher, kd_alpha=0.25)
    # the teacher is frozen: neither a parameter the optimizer sees nor part of a checkpoint
    assert {n for n, _ in obj.named_parameters()} == {f"net.{n}" for n, _ in net.named_parameters()}
    assert all(k.startswith(("net.", "levels")) for k in obj.state_dict())
    torch.manual_seed(3)
    logits = obj(clean[:8])
    torch.manual_seed(3)
    torch.randint(0, 1, (8,))  # the level draw of the objective
    noisy = isp.add_noise(clean[:8], 0.01, 0.02)
    with torch.no_grad():
        out, target = net(noisy), teacher(noisy)
    want = (0.75 * ((out - clean[:8]) ** 2).flatten(1).mean(1) + 0.25 * ((out - target) ** 2).flatten(1).mean(1))
    ce = F.cross_entropy(logits, isp.train_labels(clean[:8]), reduction="none").detach()
    torch.testing.assert_close(ce, want, rtol=1e-4, atol=1e-7)
    with pytest.raises(isp.OptionError):
        isp.DenoiseObjective(net, [isp.NOISE_LEVELS["mid"]], None, kd_alpha=0.5)
    calib = isp.calibration_inputs(clean[:24], 0)
    q = isp.qat_denoiser(net.eval(), "w4a4", clean, calib,
                         isp.QatSettings(epochs=1, batch_size=16, init="dfq", kd_alpha=0.5), tmp_path, teacher=teacher)
    rep = verify(q, calib[:4])
    assert rep["exact"] and rep["mismatching_outputs"] == 0
