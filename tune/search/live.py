"""What `tune run` shows a person: one line per trial event, a progress bar over the study's budget, the best so far.

Ray's own output (its status tables, checkpoint lines, log records) goes to the study's log file instead
(`tune.search.ray_setup.quiet_logs`), unless `--verbose`. On a terminal a tqdm bar stays under the event lines;
when stdout is not a terminal (CI, `| tee`) there is no bar, and a progress line follows each trial's end instead.
"""
from __future__ import annotations

import os
import sys
import time

from ray import tune
from tqdm import tqdm

from tune import outcomes

_current: LiveView | None = None


def say(line: str) -> None:
    """A line of the study's live output (under its progress bar when there is one)."""
    if _current is not None:
        _current.say(line)
    else:
        print(line, flush=True)


def current_view() -> tune.Callback:
    """The view of this process's study: what a LiveView restored from Ray's saved experiment becomes
    (a silent callback where no view was started, e.g. a Tuner.restore of one's own)."""
    return _current if _current is not None else tune.Callback()


class LiveView(tune.Callback):
    """Ray Tune callback printing trial events, with a progress bar over trials (or the time budget)."""

    def __init__(self, metric: str, mode: str, epochs: int, num_samples: int, done_before: int = 0,
                 deadline: float | None = None, best: tuple[float, str] | None = None, stream=None):
        """deadline: when the time budget ends (time.time()), for the bar and to tell trials it cut."""
        global _current
        self.metric, self.mode, self.epochs = metric, mode, epochs
        self.total, self.done, self.deadline = num_samples, done_before, deadline
        self.first = done_before + 1  # the number of this round's first trial
        self.stream = stream or sys.stdout
        self.numbers: dict[str, int] = {}  # Ray trial id -> the trial's number in this study (1, 2, ...)
        self.trial_best: dict[str, tuple[float, int]] = {}  # Ray trial id -> (best value, its epoch)
        self.planned: dict[str, int] = {}  # Ray trial id -> its schedule's length, as it last reported it
        self.ended: set[str] = set()  # Ray trial ids of the trials whose end was shown
        self.best = best  # (value, which trial) of the best epoch so far
        self.start = time.time()
        self.budget = deadline - self.start if deadline else None
        self.bar: tqdm | None = None
        if _terminal_width(self.stream) > 0:
            total, unit = (int(self.budget), "s") if self.budget else (num_samples, "trial")
            self.bar = tqdm(total=total, initial=0 if self.budget else done_before, unit=unit, file=self.stream,
                            dynamic_ncols=True, leave=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} {unit}s "
                            "[{elapsed}<{remaining}{postfix}]")
        _current = self

    def __reduce__(self):  # Ray saves callbacks with the experiment: a resumed study gets this process's view
        return current_view, ()

    # What Ray calls

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.numbers:  # retried after its process died, or resumed
            epoch = (trial.last_result or {}).get("epoch", 0)
            self.say(f"#{self.numbers[trial.trial_id]} restarted after epoch {epoch}  (trial {trial.trial_id})")
            return
        number = self._number(trial)
        params = "  ".join(f"{k}={_value(v)}" for k, v in sorted(trial.config.items())) or "no sampled values"
        self.say(f"#{number} started   {params}  (trial {trial.trial_id})")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        number, value, epoch = self._number(trial), result.get(self.metric), int(result.get("epoch", 0))
        if value is None:
            return
        mark = ""
        if self._better(value, self.trial_best.get(trial.trial_id)):
            self.trial_best[trial.trial_id] = (value, epoch)
        if self._better(value, self.best):
            self.best, mark = (value, f"#{number}"), "  * best so far"
        losses = "  ".join(f"{k} {result[k]:.4f}" for k in ("val_loss", "train_loss") if k in result)
        seconds = f"  {result['epoch_time_s']:.1f}s" if "epoch_time_s" in result else ""
        epochs = result.get("planned_epochs") or trial.config.get("train.epochs", self.epochs)  # shortened: its own
        if epochs != self.planned.setdefault(trial.trial_id, trial.config.get("train.epochs", self.epochs)):
            mark += f"  (re-planned from {self.planned[trial.trial_id]} to {epochs} epochs: it ends within the budget)"
        self.planned[trial.trial_id] = epochs
        if "average_val_f1" in result:  # train.average_last, at the schedule's end
            averaged = int(result.get("averaged_epochs") or 0)
            mark += (f"  (the mean of its last {averaged} epochs' weights)" if averaged else
                     f"  (the mean of its last epochs scored {result['average_val_f1']:.4f}: not kept)")
        self.say(f"#{number} epoch {epoch}/{epochs}  {self.metric} {value:.4f}  {losses}{seconds}{mark}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        if outcomes.of_trial(trial, self.epochs) == outcomes.FAILED:  # it failed by itself: reported its error
            return self.on_trial_error(iteration, trials, trial, **info)
        self.ended.add(trial.trial_id)
        number, best = self._number(trial), self.trial_best.get(trial.trial_id)
        ended = {outcomes.FINISHED: "finished", outcomes.STOPPED_EARLY: "stopped early",
                 outcomes.CUT: "cut by the time budget (not exported)"}[
            outcomes.of_trial(trial, self.epochs, self.deadline)]
        score = f": best {self.metric} {best[0]:.4f} at epoch {best[1]}" if best else ""
        self._trial_ended(f"#{number} {ended} after epoch {(trial.last_result or {}).get('epoch', 0)}{score}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended.add(trial.trial_id)
        self._trial_ended(f"#{self._number(trial)} failed after epoch {(trial.last_result or {}).get('epoch', 0)}: "
                          f"{first_line(outcomes.error_text(trial))}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        epoch = (trial.last_result or {}).get("epoch", 0)
        reason = first_line(outcomes.error_text(trial)).split(". ")[0][:120]
        self.say(f"#{self._number(trial)} lost its process ({reason}): retrying after epoch {epoch}, "
                 "from its checkpoint")

    def on_step(self, iteration, trials, **info):
        if self.bar is not None and self.budget:
            self.bar.n = min(int(time.time() - self.start), self.bar.total)
            self.bar.refresh()

    def on_experiment_end(self, trials, **info):
        if self.deadline is not None and time.time() >= self.deadline:  # Ray's time limit stopped these trials
            for trial in trials:  # without telling callbacks that they ended
                if trial.trial_id in self.numbers and trial.trial_id not in self.ended:
                    self.on_trial_complete(0, trials, trial)
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # Helpers

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def _number(self, trial) -> int:
        return self.numbers.setdefault(trial.trial_id, self.first + len(self.numbers))

    def _better(self, value: float, than: tuple | None) -> bool:
        return than is None or (value > than[0] if self.mode == "max" else value < than[0])

    def _trial_ended(self, line: str) -> None:
        self.done += 1
        self.say(line)
        best = f"best {self.metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else "no result yet"
        if self.bar is not None:
            if not self.budget:
                self.bar.update(1)
            self.bar.set_postfix_str(best)
        else:
            budget = f" of {duration(self.budget)}" if self.budget else ""
            self.say(f"-- {self.done}/{self.total} trials, {best}, {duration(time.time() - self.start)}{budget}")


def first_line(error: str | None) -> str:
    """A trial's error in one line: the traceback's last, e.g. 'FloatingPointError: loss became nan at step 1'."""
    lines = [line for line in (error or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


def _terminal_width(stream) -> int:
    """The width of the terminal `stream` writes to; 0 when it is no terminal (a file, a pipe, CI)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else 0
    except (AttributeError, OSError, ValueError):
        return 0


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
