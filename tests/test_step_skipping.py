"""Steps that cannot update (non-finite loss or gradient, out of memory) are skipped, counted
and logged; too many in a row stop the run with a message naming the step and the ids."""
from __future__ import annotations

import logging

import pytest
import torch

from framework.errors import UserError
from framework.tasks.classification import UtteranceClassificationTask
from recipes.kws import KWS


class FaultyTask(UtteranceClassificationTask):
    """Real training, except that the micro-batches numbered in ``faults`` (1-based) fail."""

    faults: dict[int, str] = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def train_step(self, batch):
        self.calls += 1
        fault = self.faults.get(self.calls)
        if fault == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        loss = super().train_step(batch)
        return loss * float("nan") if fault == "nan" else loss


def faulty_problem(faults: dict[int, str]):
    class Faulty(KWS):
        def build_task(self, build_task, model, encoder):
            task = FaultyTask(model, encoder.classes, **build_task)
            task.faults = faults
            return task
    return Faulty


@pytest.fixture
def warnings_logged(caplog):
    """Messages of warnings from the framework's logger (which does not propagate)."""
    logger = logging.getLogger("framework")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.WARNING)
    yield lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    logger.removeHandler(caplog.handler)


def checkpoint(target_dir, step: int) -> dict:
    return torch.load(target_dir / f"train/checkpoints/step-{step:08d}.pt", weights_only=True)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, run_kws, warnings_logged):
    run_kws(tmp_path, problem=faulty_problem({5: "nan", 6: "nan", 7: "nan"}), stop="train")
    state = checkpoint(tmp_path, 40)
    assert state["progress"]["skipped_steps"] == 3
    assert all(torch.isfinite(v).all() for v in state["task"].values())
    warnings = [m for m in warnings_logged() if "update skipped" in m]
    assert len(warnings) == 3 and warnings[0].startswith("step 5: ")
    assert "batch ids: " in warnings[0]


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(tmp_path, run_kws):
    problem = faulty_problem({step: "nan" for step in range(3, 41)})
    with pytest.raises(UserError) as err:
        run_kws(tmp_path, problem=problem, stop="train", dotlist=["train.max_nonfinite_steps=4"])
    message = str(err.value)
    assert message.startswith("step 6: 4 steps in a row had a non-finite loss")
    assert "last batch ids: " in message and "train.max_nonfinite_steps" in message


def test_gradient_accumulation_counts_steps_not_micro_batches(tmp_path, run_kws):
    # micro-batch 3 is in step 2 (2 per step): one skipped step
    run_kws(tmp_path, problem=faulty_problem({3: "nan"}), stop="train",
            dotlist=["train.gradient_accumulate=2"])
    assert checkpoint(tmp_path, 40)["progress"]["skipped_steps"] == 1


def test_one_out_of_memory_batch_is_skipped_with_its_ids(tmp_path, run_kws, warnings_logged):
    run_kws(tmp_path, problem=faulty_problem({9: "oom"}), stop="train")
    assert checkpoint(tmp_path, 40)["progress"]["skipped_steps"] == 1
    [warning] = [m for m in warnings_logged() if "out of memory" in m]
    assert warning.startswith("step 9: update skipped")
    assert "batch of 16 items" in warning and "ids " in warning


def test_repeated_out_of_memory_stops_with_advice(tmp_path, run_kws):
    with pytest.raises(UserError) as err:
        run_kws(tmp_path, problem=faulty_problem({9: "oom", 10: "oom"}), stop="train")
    message = str(err.value)
    assert message.startswith("step 10: out of memory again")
    assert "build_batch_sampler.train.batch_size" in message and "max_secs" in message
