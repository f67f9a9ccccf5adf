"""How a batch is split into tasks (``flows.batch.plan_groups``)."""

import pytest

from flows.batch import MAX_PER_TASK, plan_groups


@pytest.mark.parametrize("n, slots", [(1, 1), (7, 2), (100, 2), (1000, 2), (5000, 16), (3, 8)])
def test_guided_groups_cover_every_collection_once_and_shrink(n, slots):
    groups = plan_groups(n, slots)
    assert [i for g in groups for i in g] == list(range(n))
    sizes = [len(g) for g in groups]
    assert sizes == sorted(sizes, reverse=True)  # large first, small last
    assert max(sizes) <= MAX_PER_TASK
    assert sizes[-1] == 1  # the workers end together
    assert sizes[0] == min(MAX_PER_TASK, -(-n // (2 * slots)))


def test_guided_groups_need_far_fewer_tasks_than_collections():
    assert len(plan_groups(100, 2)) == 14
    assert len(plan_groups(1000, 2)) <= 40


def test_fixed_group_size():
    assert [list(g) for g in plan_groups(7, 2, per_task=3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [len(g) for g in plan_groups(4, 2, per_task=1)] == [1, 1, 1, 1]
    assert plan_groups(0, 2) == []
