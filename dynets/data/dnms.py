"""The delayed nonmatch-to-sample task (Miconi 2017, eLife 6:e20899, Fig. 1): two stimuli, A or B,
separated by a delay; at the end of the trial the output says whether they differed."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Trials:
    """The trial types of a task, as series on the time grid of a trial.

    Attributes:
        x: ``(kinds, steps, in_features)`` the input of each trial type at every step.
        y: ``(kinds, steps, out_features)`` the target of each trial type, NaN where the output is
            not scored.
        names: the trial types' names.
        dt: the step of the series.
    """

    x: torch.Tensor
    y: torch.Tensor
    names: tuple[str, ...]
    dt: float

    @property
    def steps(self) -> int:
        """The number of steps of a trial."""
        return self.x.shape[1]

    def batch(self, kinds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the trial types ``kinds`` ``(batch,)``: one trial per row."""
        return self.x[kinds], self.y[kinds]


def dnms(dt: float = 1.0, stimulus: float = 200.0, delay: float = 200.0, response: float = 200.0,
         duration: float = 1000.0, target: float = 0.98) -> Trials:
    """The four trial types AA, AB, BA, BB of delayed nonmatch-to-sample.

    Input channel 0 is stimulus A and channel 1 stimulus B (value 1 while shown, else 0). The first
    stimulus is shown on [0, ``stimulus``), the second from ``stimulus + delay`` for ``stimulus``;
    the output is scored over the last ``response`` of the trial, against −``target`` when the two
    stimuli match (AA, BB) and +``target`` when they differ (AB, BA). Times are in the units of
    ``dt`` (ms in the paper: stimuli of 200 ms, a 200 ms delay, the error over the last 200 ms of
    a 1000 ms trial, targets ±0.98 — the published code's values).

    Args:
        dt: the step of the series.
        stimulus: the duration of each stimulus.
        delay: the time between the end of the first stimulus and the start of the second.
        response: the scored period at the end of the trial.
        duration: the length of a trial.
        target: the magnitude of the target, in (0, 1) (the range of tanh).
    """
    steps, on, gap, scored = (round(v / dt) for v in (duration, stimulus, delay, response))
    if not 0 < target < 1 or min(on, scored) < 1 or gap < 0 or 2 * on + gap > steps - scored:
        raise ValueError(f"dnms needs 0 < target < 1 and two stimuli and a delay that end before the scored "
                         f"period (2·stimulus + delay <= duration − response, each at least one step of dt={dt}); "
                         f"got stimulus={stimulus}, delay={delay}, response={response}, duration={duration}, "
                         f"target={target}")
    names = ("AA", "AB", "BA", "BB")
    x = torch.zeros(4, steps, 2)
    y = torch.full((4, steps, 1), float("nan"))
    for k, name in enumerate(names):
        x[k, :on, "AB".index(name[0])] = 1.0
        x[k, on + gap:2 * on + gap, "AB".index(name[1])] = 1.0
        y[k, steps - scored:] = target if name[0] != name[1] else -target
    return Trials(x, y, names, float(dt))
