"""Episodic sampler: N-way K-shot tasks with disjoint support/query, permuted labels, seeded."""

from __future__ import annotations

import torch

from metaland.data.layout import load_split
from metaland.data.tasks import load_task_set, materialise, sample_tasks, save_task_set
from metaland.seeding import derive_seed, generator


def test_tasks_are_well_formed(tiny_dataset):
    split = load_split(tiny_dataset, "train")
    tasks = sample_tasks(split, ways=5, shots=2, queries=3, n_tasks=50, generator=generator(0, "t"))
    assert tasks.classes.shape == (50, 5) and tasks.support.shape == (50, 5, 2) and tasks.query.shape == (50, 5, 3)
    for t in range(50):
        assert len(set(tasks.classes[t].tolist())) == 5, "classes within a task are distinct"
        for w in range(5):
            picked = tasks.support[t, w].tolist() + tasks.query[t, w].tolist()
            assert len(set(picked)) == 5, "support and query samples are disjoint"
            assert all(0 <= i < split.instances(int(tasks.classes[t, w])) for i in picked)
    # labels are permuted per task: the class given label 0 varies across tasks
    assert len(set(tasks.classes[:, 0].tolist())) > 5


def test_sampling_is_a_pure_function_of_the_generator(tiny_dataset):
    split = load_split(tiny_dataset, "train")
    a = sample_tasks(split, ways=3, shots=1, queries=2, n_tasks=10, generator=generator(7, "p"))
    b = sample_tasks(split, ways=3, shots=1, queries=2, n_tasks=10, generator=generator(7, "p"))
    c = sample_tasks(split, ways=3, shots=1, queries=2, n_tasks=10, generator=generator(8, "p"))
    assert torch.equal(a.classes, b.classes) and torch.equal(a.query, b.query)
    assert not torch.equal(a.classes, c.classes)
    assert derive_seed(7, "p") != derive_seed(7, "q")


def test_materialise_gathers_the_right_images_and_labels(tiny_dataset):
    split = load_split(tiny_dataset, "val")
    tasks = sample_tasks(split, ways=4, shots=2, queries=3, n_tasks=3, generator=generator(1, "m"))
    batch = materialise(split, tasks)
    assert batch.support_x.shape == (3, 8, 1, 8, 8) and batch.query_x.shape == (3, 12, 1, 8, 8)
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    t, w, k = 2, 3, 1
    cls = int(tasks.classes[t, w])
    expected = split.images[split.offsets[cls] + tasks.support[t, w, k]].float() / 255
    assert torch.equal(batch.support_x[t, w * 2 + k], expected)
    assert batch.support_x.min() >= 0 and batch.support_x.max() <= 1


def test_task_sets_round_trip_through_json(tiny_dataset, tmp_path):
    split = load_split(tiny_dataset, "test")
    tasks = sample_tasks(split, ways=2, shots=1, queries=1, n_tasks=4, generator=generator(0, "j"))
    save_task_set(tmp_path / "tasks.json", tasks, {"split": "test"})
    loaded = load_task_set(tmp_path / "tasks.json")
    assert all(
        torch.equal(x, y)
        for x, y in zip(
            (tasks.classes, tasks.support, tasks.query), (loaded.classes, loaded.support, loaded.query), strict=True
        )
    )
