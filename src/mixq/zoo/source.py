"""Where a model comes from: a zoo name, a model file or a user's Python builder, with optional weights.

    ModelSource("cnv")                                   # a zoo model (its real weights when it has them)
    ModelSource("nets/mynet.py:build", "w.pt", (3, 32, 32))   # a function in a file, called with no arguments
    ModelSource("mypkg.models:small_cnn")                # a function in an importable module
    ModelSource("exported/net.onnx")                     # ONNX, TorchScript (.pt/.ts) or torch.export (.pt2)

A model file is read by :func:`mixq.zoo.model_files.load_model_file` (every kind through the ONNX
import); its input shape comes from the file (ONNX, .pt2) or ``input_shape`` (TorchScript).

A builder is a function taking no arguments and returning an ``nn.Module``. Its input shape
(C, H, W) is ``input_shape`` if given, else an ``input_shape`` attribute of the function or of its
module. ``weights`` is a ``torch.save``-d state dict, loaded strictly. Every failure (a missing file,
a syntax error, an import error, no such function, the function raising or returning something
else, weights for another model, NaN weights, no input shape) is a one-line
:class:`~mixq.errors.ModelError` (or the :mod:`mixq.validate` error of the weights) naming the spec.
:meth:`ModelSource.to_dict` / :meth:`ModelSource.from_dict` record a source in an artifact; a
builder file is recorded with its absolute path as well, so the artifact rebuilds it from any folder.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from torch import nn

from mixq import progress, validate
from mixq.errors import MixqError, ModelError, OptionError

__all__ = ["ModelSource", "parse_shape"]


def _mtime(path: str) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


@functools.lru_cache(maxsize=32)
def _file_shape(path: str, mtime: float) -> tuple[int, ...]:
    """The per-sample input shape a model file brings (read once per file version)."""
    from mixq.zoo.model_files import load_model_file

    shape = getattr(load_model_file(path), "input_shape", None)
    if not shape:
        raise OptionError(f"{path}: the file does not say its input shape; give --input-shape C,H,W")
    return tuple(int(v) for v in shape)


def _one_line(text: object, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def parse_shape(value: Any, name: str = "--input-shape") -> tuple[int, ...]:
    """``"C,H,W"`` (or ``CxHxW``, or a sequence of three integers) -> ``(C, H, W)``, each >= 1; a 1-D
    signal model's ``C,L`` -> ``(C, L)`` (or ``L`` for a model taking (N, L) samples)."""
    if isinstance(value, str):
        parts: list[Any] = value.replace("x", ",").replace("X", ",").split(",")
        try:
            vals = [int(p.strip()) for p in parts]
        except ValueError:
            vals = []
    elif isinstance(value, list | tuple):
        vals = list(value) if all(isinstance(v, int) and not isinstance(v, bool) for v in value) else []
    else:
        vals = []
    if len(vals) not in (1, 2, 3) or min(vals) < 1:
        raise OptionError(f"{name}: must be C,H,W with three integers >= 1, e.g. 3,32,32 (or C,L for a 1-D "
                          f"signal), got {value!r}")
    return tuple(int(v) for v in vals)


@dataclass(frozen=True)
class ModelSource:
    """A model to work on: ``spec`` is a zoo name, ``FILE.py:FUNCTION`` or ``package.module:FUNCTION``.

    ``input_shape`` as given (``--input-shape``); :meth:`shape` resolves it.
    """

    spec: str
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec.strip():
            raise ModelError(f"model {self.spec!r}: give a zoo model name, FILE.py:FUNCTION or package.module:FUNCTION")
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", parse_shape(self.input_shape))
        if self.kind == "file":
            pass  # read (and checked) by load / shape
        elif self.kind == "zoo":
            from mixq import zoo

            if self.spec not in zoo.available():
                hint = (" (a builder needs its function: FILE.py:FUNCTION)" if self.spec.endswith(".py")
                        else " nor a builder FILE.py:FUNCTION or package.module:FUNCTION")
                raise ModelError(f"model {self.spec!r} is not a zoo model ({', '.join(zoo.available())}){hint}")
        else:
            where, _, func = self.spec.rpartition(":")
            if not where or not func.isidentifier():
                raise ModelError(f"model {self.spec!r}: a builder is FILE.py:FUNCTION or package.module:FUNCTION "
                                 "(FUNCTION a Python name)")

    # ------------------------------------------------------------------ what it is

    @property
    def kind(self) -> Literal["zoo", "builder", "file"]:
        from mixq.zoo.model_files import MODEL_FILE_SUFFIXES

        if ":" not in self.spec and Path(self.spec).suffix.lower() in MODEL_FILE_SUFFIXES:
            return "file"
        return "builder" if ":" in self.spec else "zoo"

    @property
    def name(self) -> str:
        """The zoo name, the model file's stem, or the builder function's name (plans, output folders)."""
        if self.kind == "file":
            return Path(self.spec).stem
        return self.spec if self.kind == "zoo" else self.spec.rpartition(":")[2]

    @property
    def function(self) -> str | None:
        return self.spec.rpartition(":")[2] if self.kind == "builder" else None

    @property
    def file(self) -> Path | None:
        """The model file, or the builder's file (``FILE.py:FUNCTION``); None for a zoo name or a module."""
        if self.kind == "file":
            return Path(self.spec)
        if self.kind == "zoo":
            return None
        where = self.spec.rpartition(":")[0]
        if where.endswith(".py") or "/" in where or os.sep in where:
            return Path(where)
        return None

    @property
    def module(self) -> str | None:
        """The builder's module (``package.module:FUNCTION``); None otherwise."""
        if self.kind != "builder" or self.file is not None:
            return None
        return self.spec.rpartition(":")[0]

    def __str__(self) -> str:
        return self.spec

    # ------------------------------------------------------------------ the builder

    def _import(self) -> ModuleType:
        path = self.file
        if path is None:
            mod = self.module or ""
            try:
                return importlib.import_module(mod)
            except SyntaxError as e:
                raise ModelError(f"{self.spec}: {e.filename}:{e.lineno}: SyntaxError {e.msg}") from None
            except Exception as e:
                raise ModelError(f"{self.spec}: cannot import module {mod} ({type(e).__name__}: "
                                 f"{_one_line(e)})") from None
        if not path.exists():
            raise ModelError(f"{self.spec}: file {path} not found")
        if not path.is_file():
            raise ModelError(f"{self.spec}: {path} is not a file")
        full = path.resolve()
        mod_name = "mixq_builder_" + hashlib.sha1(str(full).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(mod_name, full)
        if spec is None or spec.loader is None:
            raise ModelError(f"{self.spec}: cannot import {path} as Python (give a .py file)")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        sys.path.insert(0, str(full.parent))  # the file's sibling modules import as they do when it runs
        try:
            spec.loader.exec_module(module)
        except SyntaxError as e:
            sys.modules.pop(mod_name, None)
            raise ModelError(f"{self.spec}: {e.filename}:{e.lineno}: SyntaxError {e.msg}") from None
        except Exception as e:
            sys.modules.pop(mod_name, None)
            raise ModelError(f"{self.spec}: importing {path} raised {type(e).__name__}: {_one_line(e)}") from None
        finally:
            with contextlib.suppress(ValueError):  # the file may have removed it itself
                sys.path.remove(str(full.parent))
        return module

    def _builder(self) -> tuple[ModuleType, Callable[[], Any]]:
        module = self._import()
        func = self.function or ""
        fn = getattr(module, func, None)
        if fn is None:
            found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                           and getattr(v, "__module__", None) == module.__name__)
            raise ModelError(f"{self.spec}: no function {func!r} in {self.file or self.module}"
                             + (f" (it defines {', '.join(found[:8])})" if found else ""))
        if not callable(fn):
            raise ModelError(f"{self.spec}: {func} is a {type(fn).__name__}, not a function")
        return module, fn

    # ------------------------------------------------------------------ shape and model

    def shape(self) -> tuple[int, ...]:
        """The input shape (C, H, W): given, the zoo's, the model file's, or the builder's ``input_shape``
        attribute."""
        if self.input_shape is not None:
            return self.input_shape
        if self.kind == "file":
            return _file_shape(str(Path(self.spec).resolve()), _mtime(self.spec))
        if self.kind == "zoo":
            from mixq import zoo

            return zoo.input_shape(self.spec)
        module, fn = self._builder()
        for owner in (fn, module):
            value = getattr(owner, "input_shape", None)
            if value is not None:
                try:
                    return parse_shape(value, f"{self.spec}: attribute input_shape")
                except OptionError as e:
                    raise ModelError(str(e)) from None
        raise OptionError(f"{self.spec}: give --input-shape C,H,W (e.g. 3,32,32): a builder's input shape is not "
                          f"known (or set an input_shape attribute on {self.function} or its module)")

    def load(self, pretrained: bool = True, fallback: bool = True) -> nn.Module:
        """Build the model (eval mode): the zoo model (its real weights when ``pretrained`` and it has them;
        without them a random init, or with ``fallback=False`` a :class:`ModelError`) or the builder's;
        then ``weights`` strictly; every value checked."""
        model: Any = None
        if self.kind == "file":
            from mixq.zoo.model_files import load_model_file

            model = load_model_file(self.spec, self.input_shape)
        elif self.kind == "zoo":
            from mixq import zoo

            if pretrained and self.weights is None:
                try:
                    model = zoo.load(self.spec, pretrained=True)
                except ModelError:
                    if not fallback:
                        raise
                    progress.log(f"{self.spec}: no real weights available, using a random init")
            if model is None:
                model = zoo.load(self.spec)
        else:
            _, fn = self._builder()
            try:
                model = fn()
            except MixqError as e:
                raise type(e)(f"{self.spec}: {e}") from None
            except Exception as e:
                raise ModelError(f"{self.spec}: {self.function}() raised {type(e).__name__}: {_one_line(e)}") from None
            if not isinstance(model, nn.Module):
                raise ModelError(f"{self.spec}: {self.function}() returned a {type(model).__name__}, "
                                 "not a torch.nn.Module")
        if self.weights is not None:
            self._load_weights(model)
        try:
            validate.model(model, self.spec)
        except MixqError as e:
            raise type(e)(_one_line(e, 500)) from None
        return model.eval()  # type: ignore[no-any-return]

    def _load_weights(self, model: nn.Module) -> None:
        assert self.weights is not None
        try:
            state = validate.load_state(self.weights, f"{self.spec}: --weights {self.weights}")
        except MixqError as e:
            raise type(e)(_one_line(e, 500)) from None
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and state[k].shape != v.shape]
        problems = [f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                    for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
        if problems:
            raise ModelError(f"{self.spec}: --weights {self.weights} does not fit the model ({'; '.join(problems)})")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:  # pragma: no cover - the checks above name every case torch refuses
            raise ModelError(f"{self.spec}: --weights {self.weights} does not fit the model: {_one_line(e)}") from None

    # ------------------------------------------------------------------ records

    def to_dict(self) -> dict[str, Any]:
        """Plain data for an artifact: the spec, its builder file's absolute path, weights, input shape."""
        out: dict[str, Any] = {"kind": self.kind, "spec": self.spec, "name": self.name,
                               "weights": None if self.weights is None else str(Path(self.weights).resolve())}
        if self.file is not None:
            out["file"] = str(self.file.resolve())
        try:
            out["input_shape"] = list(self.shape()) if self.input_shape is None else list(self.input_shape)
        except MixqError:
            out["input_shape"] = None
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "model source") -> ModelSource:
        """The source :meth:`to_dict` recorded; a builder file is taken at its recorded absolute path when
        it is there, else as recorded (relative to the current folder)."""
        if not isinstance(d, Mapping):
            raise ModelError(f"{source}: must be a dict, got {type(d).__name__}")
        spec = d.get("spec")
        if not isinstance(spec, str):
            raise ModelError(f"{source}: field 'spec' must be a string, got {spec!r}")
        shape = d.get("input_shape")
        if shape is not None:
            try:
                shape = parse_shape(list(shape) if isinstance(shape, list | tuple) else shape)
            except OptionError as e:
                raise ModelError(f"{source}: {e}") from None
        full = d.get("file")
        if isinstance(full, str) and ":" in spec and Path(full).is_file():
            spec = f"{full}:{spec.rpartition(':')[2]}"
        elif isinstance(full, str) and d.get("kind") == "file" and Path(full).is_file():
            spec = full
        weights = d.get("weights")
        try:
            return cls(spec, weights if isinstance(weights, str) else None, shape)
        except MixqError as e:
            raise ModelError(f"{source}: {e}") from None
