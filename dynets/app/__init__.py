"""The hydra-free application: build a run from a composed config (:mod:`.run`), the training
loop (:mod:`.fit`), checkpoints, loggers, data-parallel helpers, plots and the collection of
run directories. The engine (``dynets``) never imports this package; the studies may."""
from .fit import fit
from .run import build, main, resolve_device, train

__all__ = ["fit", "build", "main", "resolve_device", "train"]
