"""``TrainState`` JSON: round trip, and states written before the data stream kept its own state."""

from __future__ import annotations

import json

from mvrec_dist.train.state import TrainState


def test_round_trip_keeps_the_data_state_opaque():
    st = TrainState(epoch=2, step=40, best_metric=0.25, best_step=30, data={"epoch": 2, "anything": [1, {"x": 2}]})
    back = TrainState.from_json(st.to_json())
    assert back == st and json.loads(st.to_json())["data"] == {"epoch": 2, "anything": [1, {"x": 2}]}


def test_a_state_written_before_the_task_seam_loads_with_its_cursors_as_the_data_state():
    # state.json of a mid-epoch checkpoint written at e8e155b (cursors etc. at the top level).
    old = {"best_epoch": 0, "best_metric": 0.0123, "best_step": 7, "cursors": [
        {"batches": 3, "consumer": 0, "samples": 40, "windows": 1}, {"batches": 3, "consumer": 1, "samples": 38,
                                                                       "windows": 0}],
        "elapsed_seconds": 12.5, "epoch": 1, "epoch_step": 3, "evals_since_best": 0, "history": [],
        "loader_workers": 0, "plan": None, "seconds_to_best": 6.0, "step": 10, "train_seconds": 9.0,
        "window_skips": {"17": 2}, "world_size": 2}
    st = TrainState.from_json(json.dumps(old))
    assert (st.epoch, st.step, st.epoch_step, st.best_step) == (1, 10, 3, 7)
    assert st.data == {"epoch": 1, "cursors": old["cursors"], "plan": None, "window_skips": {"17": 2},
                       "world_size": 2, "loader_workers": 0}
    # An epoch-boundary checkpoint of then: no cursors, the next epoch's start.
    boundary = TrainState.from_json(json.dumps({**old, "cursors": [], "window_skips": {}, "epoch": 2}))
    assert boundary.data["epoch"] == 2 and boundary.data["cursors"] == []
