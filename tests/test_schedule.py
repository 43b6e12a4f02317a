"""The scheduling policy alone: plain data in, decisions out, no processes."""

from __future__ import annotations

import pytest

from nexus_dataflow_plugin import schedule
from nexus_dataflow_plugin.schedule import MAX_SLOW, PER_WORKER, Load, assign


def test_one_worker_per_fifty_files_up_to_the_pools_size():
    sizes = (0, 1, schedule.FILES_PER_WORKER, schedule.FILES_PER_WORKER + 1, 10_000)
    assert [schedule.wanted_workers(n, 3) for n in sizes] == [1, 1, 1, 2, 3]


def test_each_ready_worker_takes_up_to_its_share_of_regular_files_in_queue_order():
    plan = assign([False] * 10, [Load(True, 0), Load(True, 0)], slow_running=0)
    assert [index for index, _, _ in plan] == list(range(2 * PER_WORKER))
    assert sorted(worker for _, worker, _ in plan) == [0] * PER_WORKER + [1] * PER_WORKER
    assert not any(slow for _, _, slow in plan)


def test_a_worker_still_warming_up_gets_nothing():
    plan = assign([False, False], [Load(False, 0), Load(True, PER_WORKER - 1)], 0)
    assert plan == [(0, 1, False)]


def test_busy_workers_leave_regular_files_queued():
    assert assign([False], [Load(True, PER_WORKER)], slow_running=0) == []


def test_expected_slow_files_start_beside_full_workers_up_to_the_pools_limit():
    plan = assign([True, True, False], [Load(True, PER_WORKER)], slow_running=MAX_SLOW - 1)
    assert plan == [(0, 0, True)]  # the second slow one waits as a regular file, and blocks


def test_the_queue_order_is_the_start_order():
    plan = assign([False, True, False], [Load(True, PER_WORKER - 1)], slow_running=0)
    assert [index for index, _, _ in plan] == [0, 1]  # the third waits for a free slot


def test_a_file_is_slow_after_half_a_second_or_half_its_timeout():
    assert schedule.slow_after(10) == schedule.SLOW_FILE_S
    assert schedule.slow_after(0.4) == 0.2
    assert schedule.becomes_slow(0.6, 0.5, slow_running=0)
    assert not schedule.becomes_slow(0.6, 0.5, slow_running=MAX_SLOW)
    assert not schedule.becomes_slow(0.1, 0.5, slow_running=0)


def test_files_that_wait_at_import_or_were_slow_last_time_are_expected_slow():
    assert schedule.expected_slow(None, True, 0.5)
    assert schedule.expected_slow(0.7, False, 0.5)
    assert not schedule.expected_slow(0.1, False, 0.5)
    assert not schedule.expected_slow(None, False, 0.5)


@pytest.mark.parametrize("files,idle,cores,expected", [
    (1000, 2, 2, 1),   # two cores: the server on one, a read-ahead on the other
    (1000, 4, 8, 4),   # one per idle worker, at most
    (1000, 8, 4, 3),   # and a core left to the server
    (40, 4, 8, 1),     # each with enough files to pay its start
    (31, 4, 8, 0),
    (1000, 0, 8, 0),   # no warm worker yet: the screen does not wait for one
    (1000, 2, 1, 0),
])
def test_read_ahead_processes_take_the_cores_the_server_leaves(files, idle, cores, expected):
    assert schedule.read_ahead_processes(files, idle, cores) == expected
