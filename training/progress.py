"""The training progress bar of ``tunemv fit`` / ``distill``: optimizer steps out of ``trainer.max_steps``.

tunemv's runs are bounded by steps, not epochs; Lightning's own bar counts the batches of each epoch under
"Epoch 1/-2" (``max_epochs`` is -1 when only ``max_steps`` is set). This one shows ``Step 120/2000`` for the whole
run, continuing from the resumed step after ``--ckpt_path``. Without ``max_steps`` it is Lightning's bar.

The Rich bar on a terminal when ``rich`` imports (as Lightning's own default), else the tqdm bar, which a log
file shows as it goes. A config that lists another
progress bar in ``trainer.callbacks`` gets that one instead (``lightning_cli.TunemvCLI.instantiate_trainer``).
"""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import _update_n, convert_inf
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

DESCRIPTION = "Step"


def counts_steps(trainer: pl.Trainer) -> bool:
    """Whether the run is bounded by steps alone (``max_steps`` set, ``max_epochs`` not)."""
    return trainer.max_steps is not None and trainer.max_steps > 0 and trainer.max_epochs in (None, -1)


class RichStepProgressBar(RichProgressBar):
    """Lightning's Rich bar over the run's optimizer steps: ``Step ━━━━━━ 120/2000``."""

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if counts_steps(self.trainer) else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not counts_steps(self.trainer):
            return super()._get_train_description(current_epoch)
        return f"{DESCRIPTION:{len(self.validation_description)}}"  # padded as Lightning's, against flicker

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not counts_steps(trainer):
            return super().on_train_epoch_start(trainer, pl_module)
        if self.train_progress_bar_id is not None and not self._leave and not self._progress_stopped:
            return  # one bar for the whole run: a new epoch neither resets it nor its speed
        super().on_train_epoch_start(trainer, pl_module)
        self._start_at_global_step(trainer)

    def _initialize_train_progress_bar_id(self) -> None:  # resuming mid-epoch
        super()._initialize_train_progress_bar_id()
        if counts_steps(self.trainer):
            self._start_at_global_step(self.trainer)

    def _start_at_global_step(self, trainer: pl.Trainer) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            # reset rather than update, so that a resumed run's speed does not count the steps it skipped
            self.progress.reset(self.train_progress_bar_id, total=self.total_train_batches,
                                completed=trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not counts_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()


class TQDMStepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar over the run's optimizer steps: ``Step:  6%|▌     | 120/2000 [...]``."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._run_bar_started = False

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if counts_steps(self.trainer) else super().total_train_batches

    def on_train_start(self, *args: Any) -> None:
        super().on_train_start(*args)
        self._run_bar_started = False

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not counts_steps(trainer):
            return super().on_train_epoch_start(trainer, *args)
        if self._run_bar_started and not self._leave:
            return  # one bar for the whole run
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        bar.set_description(DESCRIPTION, refresh=False)
        bar.reset(total=convert_inf(self.total_train_batches))
        bar.initial = trainer.global_step  # a resumed run's rate does not count the steps it skipped
        _update_n(bar, trainer.global_step)
        self._run_bar_started = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not counts_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if self.train_progress_bar is not None and self._should_update(step, self.train_progress_bar.total):
            _update_n(self.train_progress_bar, step)
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


def step_progress_bar() -> RichStepProgressBar | TQDMStepProgressBar:
    """The default progress bar of tunemv's Lightning runs: Rich on a terminal when it imports (as Lightning
    chooses), else tqdm. Rich draws nothing into a file or a pipe until the run ends, so a fit logged to a
    file (``tunemv fit ... > fit.log``, the demo under ``nohup``) would show no progress for its whole run."""
    interactive = sys.stdout is not None and sys.stdout.isatty()
    return RichStepProgressBar() if _RICH_AVAILABLE and interactive else TQDMStepProgressBar()
