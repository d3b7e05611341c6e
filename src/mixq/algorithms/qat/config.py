"""`QatConfig`: every setting of a quantization-aware training run, frozen and validated.

A config holds plain values only (no tensors, no live objects) so it can be
written into the checkpoint and compared on ``--resume``: resuming with a
config that changes the trajectory (learning rate, seed, epochs, ...) raises
:class:`QatError` naming the field. Settings that do not change the result
(``progress``, ``checkpoint_every``) may differ.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from mixq.training import TrainConfig, TrainError

QAT_SCHEMA_VERSION = 1

WEIGHT_QUANT = ("lsq", "ste", "dorefa")
ACT_QUANT = ("lsq", "dorefa")
BN_MODES = ("fold", "train")
OPTIMIZERS = ("sgd", "adam")
OBSERVER_CHOICES = ("minmax", "percentile", "mse", "kl")

#: Fields that may differ between a run and its resumption (they do not change the weights; ``device``: a run
#: checkpointed on a GPU may continue on the CPU and the other way round — bit-exact only on the CPU).
RESUME_FREE = ("progress", "checkpoint_every", "eval_every_epoch", "threads", "device")


#: A QAT run that cannot proceed: a bad config field, a checkpoint that does not match the run (the one
#: training error of :mod:`mixq.training`, which the loop and the checkpoints raise).
QatError = TrainError


@dataclass(frozen=True)
class QatConfig(TrainConfig):
    """Settings of one QAT (or pruned fine-tuning) run: the one trainer's settings
    (:class:`mixq.training.TrainConfig`, which this extends) and the quantizers'.

    * ``weight_quant``: ``lsq`` (learned per-row step sizes, LSQ gradients), ``ste``
      (steps recomputed from the current weights by the plan's observer every
      step, clipped straight-through gradient), ``dorefa`` (tanh-normalised
      weights, see :func:`mixq.algorithms.qat.functional.dorefa_weight`). Binary
      weight rows always use XNOR's ``α·sign(w)`` with ``α = mean|w|`` per row.
    * ``act_quant``: ``lsq`` (learned step) or ``dorefa`` (clip value fixed by
      calibration, clipped STE: DoReFa's ``q_k(clip(a / c, 0, 1))·c``).
    * ``grad_bits``: quantize the gradient flowing out of every quantized layer to
      this many bits with DoReFa's stochastic rounding (``None``: float gradients).
    * ``bn``: ``fold`` folds BatchNorm into the preceding layer before training;
      ``train`` keeps BN with batch statistics and folds it into the quantized
      weight on every forward (Krishnamoorthi 2018), folding for good at export.
    * ``lr``: peak learning rate. Fine-tuning starts from a trained model, usually with BN
      folded, so it is far below float training's (the CNV sweep behind the default 1e-3:
      benchmarks/results/design_measurements.md, "QAT learning rate").
    * ``kd_alpha`` / ``kd_temperature``: knowledge distillation from the FP32
      teacher (``loss = (1-α)·CE + α·T²·KL``); ``kd_alpha = 0`` disables it.
    * ``init_observer``: observer used to initialise weight and activation
      steps (``None``: the plan's own observers).
    * ``checkpoint_every``: also checkpoint every N optimizer steps (0: only at
      the end of every epoch).
    * ``threads``: torch intra-op threads during the run (``None``: leave as is);
      results are bit-identical only for the same thread count.
    * ``device``: ``cpu`` (default), ``cuda`` or ``cuda:N`` — where the model trains (calibration,
      export and the returned model stay on the CPU, see :func:`mixq.training.fit`); a CUDA device this
      machine lacks is refused when the config is made. Not part of the trajectory: a run resumes on
      another device (bit-exact resume only on the CPU).
    """

    epochs: int = 3
    weight_decay: float = 5e-5
    weight_quant: str = "lsq"
    act_quant: str = "lsq"
    grad_bits: int | None = None
    bn: str = "fold"
    init_observer: str | None = "mse"
    calib_images: int = 512
    version: int = QAT_SCHEMA_VERSION

    def __post_init__(self) -> None:
        super().__post_init__()  # the trainer's fields, named QatConfig.<field>

        def bad(name: str, msg: str) -> QatError:
            return QatError(f"QatConfig.{name}: {msg}, got {getattr(self, name)!r}")

        v = self.calib_images
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad("calib_images", "must be a positive integer")
        if self.scale_lr is not None and (isinstance(self.scale_lr, bool) or not isinstance(self.scale_lr, int | float)
                                          or not math.isfinite(self.scale_lr) or not self.scale_lr > 0):
            raise bad("scale_lr", "must be a finite positive number or null")
        if not self.momentum < 1:
            raise bad("momentum", "must be in [0, 1)")
        if self.min_lr > self.lr:
            raise bad("min_lr", f"must be in [0, lr = {self.lr!r}]")
        for name, choices in (("weight_quant", WEIGHT_QUANT), ("act_quant", ACT_QUANT), ("bn", BN_MODES)):
            if getattr(self, name) not in choices:
                raise bad(name, f"must be one of {', '.join(choices)}")
        if self.grad_bits is not None and (isinstance(self.grad_bits, bool) or not isinstance(self.grad_bits, int)
                                           or not 2 <= self.grad_bits <= 16):
            raise bad("grad_bits", "must be null or an integer in [2, 16]")
        if not self.kd_alpha <= 1:
            raise bad("kd_alpha", "must be in [0, 1]")
        if not self.kd_temperature > 0:
            raise bad("kd_temperature", "must be positive")
        if self.init_observer is not None and self.init_observer not in OBSERVER_CHOICES:
            raise bad("init_observer", f"must be null or one of {', '.join(OBSERVER_CHOICES)}")
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise bad("threads", "must be null or a positive integer")
        if self.version != QAT_SCHEMA_VERSION:
            raise bad("version", f"this mixq reads QAT config version {QAT_SCHEMA_VERSION}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "QatConfig", *, device: str | None = None) -> QatConfig:
        """The config of a dict (``to_dict``'s); ``device`` replaces the recorded one (a saved config read
        on a machine without the device it trained on)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise QatError(f"{source}: unknown field(s) {', '.join(unknown)}")
        return cls(**(d if device is None else {**d, "device": device}))

    def train_config(self) -> TrainConfig:
        """The settings of the one training loop (:func:`mixq.training.fit`) this config runs."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})

    def trajectory_diff(self, other: QatConfig) -> list[str]:
        """Fields that differ and change the training trajectory (see ``RESUME_FREE``)."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in RESUME_FREE and a[k] != b[k]]
