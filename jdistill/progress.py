"""Progress for long commands: tqdm bars on stderr that keep JAX's compilation out of the rate and the ETA.

The first call of a jitted step compiles it, which on a CPU takes as long as dozens of steps; a plain tqdm bar
then reports that first step's time as the rate and an ETA many times too long. `StepBar` shows the bar as
"NAME (compiling)" until its first update, then restarts its clock: the rate, the ETA and the elapsed time count
the steps after compilation only. Everything else is tqdm's (`disable=`, `initial=`, `set_postfix` ...).
"""

from __future__ import annotations

from tqdm.auto import tqdm

COMPILING = "compiling"


class StepBar(tqdm):
    """A tqdm bar whose first update ends a compile phase: "DESC (compiling)" before it, "DESC" with a rate from
    the later updates after it."""

    def __init__(self, *args, desc: str | None = None, **kwargs):
        self._name = desc or ""
        self._compiling = True
        super().__init__(*args, desc=f"{self._name} ({COMPILING})" if self._name else COMPILING, **kwargs)

    def update(self, n: float | None = 1):
        if not self._compiling or self.disable:
            return super().update(n)
        self._compiling = False
        done = self.format_dict["n"] + (n or 0)
        self.reset(total=self.total)  # a new start time, empty rate estimates
        self.n = self.initial = self.last_print_n = done  # the rate counts from here: (n - initial) / elapsed
        self.set_description_str(self._name)  # refreshes the display
        return True


def step_bar(total: int | None, desc: str, *, enabled: bool = True, **kwargs) -> StepBar:
    """A `StepBar` on stderr that adapts to the terminal width; `enabled=False` draws nothing."""
    return StepBar(total=total, desc=desc, dynamic_ncols=True, disable=not enabled, **kwargs)
