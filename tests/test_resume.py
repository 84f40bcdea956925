"""A training stage's checkpoint folder: keyed by what the run is a function of."""

import torch

from recaption import paths, resume


def test_the_key_changes_with_any_weight_datum_or_setting_and_only_then():
    net = torch.nn.Linear(2, 2)
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    base = resume.digest([net, images, ["a caption"], {"lr": 0.1}])
    assert base == resume.digest([net, images.clone(), ["a caption"], {"lr": 0.1}])
    edited = images.clone()
    edited[3, 2, 1, 1] = 1
    with torch.no_grad():
        moved = torch.nn.Linear(2, 2)
        moved.load_state_dict(net.state_dict())
        moved.bias[0] += 1e-6
    for other in (
        [net, edited, ["a caption"], {"lr": 0.1}],
        [net, images.float(), ["a caption"], {"lr": 0.1}],  # same values, another dtype
        [moved, images, ["a caption"], {"lr": 0.1}],
        [net, images, ["a caption."], {"lr": 0.1}],
        [net, images, ["a caption"], {"lr": 0.2}],
    ):
        assert resume.digest(other) != base


def test_a_run_removes_other_runs_checkpoints_and_finish_removes_its_own(project):
    first = resume.checkpoints("stage", [torch.zeros(1)], None, steps=100)
    first.folder.mkdir(parents=True)
    second = resume.checkpoints("stage", [torch.ones(1)], None, steps=100)
    assert second.folder != first.folder and not first.folder.exists()
    assert second.every == 10 and second.folder.parent == paths.WORK / "stage"
    second.folder.mkdir(parents=True)
    resume.finish("stage")
    assert not (paths.WORK / "stage").exists()
