import pytest
import torch
import torch.nn.functional as F

from structvpr_edge.train.losses import MultiSimilarityConfig, mask_loss, multi_similarity_loss, relational_kd, triplet_margin_loss
from structvpr_edge.train.weights import GROUPS, Keys, RankMemory, SampleWeightConfig, group_weights, positive_ranks, sample_groups


def _clustered(noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 16), dim=1)
    labels = torch.arange(4).repeat_interleave(3)
    return F.normalize(centres[labels] + noise * torch.randn(12, 16), dim=1), labels


@pytest.mark.parametrize("loss", [lambda d, l: multi_similarity_loss(d, l, MultiSimilarityConfig()), lambda d, l: triplet_margin_loss(d, l, 0.1)])
def test_metric_losses_prefer_clustered_descriptors(loss):
    tight, labels = _clustered(0.05)
    loose, _ = _clustered(2.0)
    assert loss(tight, labels) < loss(loose, labels)
    descriptors = loose.clone().requires_grad_(True)
    loss(descriptors, labels).backward()
    assert descriptors.grad.abs().sum() > 0


def test_relational_kd_is_zero_for_identical_structure_and_positive_otherwise():
    d, _ = _clustered(0.5)
    sim = d @ d.T
    assert torch.allclose(relational_kd(sim, sim, 0.1), torch.zeros(12), atol=1e-5)
    assert (relational_kd(sim.flip(0).flip(1), sim, 0.1) > 0).all()


def test_mask_loss_lower_for_correct_masks():
    target = torch.zeros(1, 6, 4, 4)
    target[:, 0, :2] = 1
    target[:, 4, 2:] = 1
    assert mask_loss(target * 10, target) < mask_loss(target.flip(2) * 10, target)


def at_angles(*degrees: float) -> torch.Tensor:
    radians = torch.deg2rad(torch.tensor(degrees))
    return torch.stack([radians.cos(), radians.sin()], dim=1)


def in_batch(teacher: torch.Tensor, student: torch.Tensor, places: torch.Tensor) -> Keys:
    return Keys(teacher, student, places, torch.arange(len(places)))


def test_positive_ranks_and_sample_groups():
    places = torch.tensor([0, 0, 1, 1])
    right, wrong = at_angles(0, 20, 90, 70), at_angles(0, 60, 30, 90)
    ids = torch.arange(4)
    assert positive_ranks(right @ right.T, places, places, ids, ids).tolist() == [1, 1, 1, 1]
    assert positive_ranks(wrong @ wrong.T, places, places, ids, ids).tolist() == [2, 3, 3, 2]
    conf = SampleWeightConfig(right_rank=1, noisy_rank=2)
    batch = in_batch(right, wrong, places)
    assert [GROUPS[g] for g in sample_groups(batch, batch, conf)] == ["teacher_right_student_wrong"] * 4
    batch = in_batch(wrong, right, places)
    groups = sample_groups(batch, batch, conf)
    assert [GROUPS[g] for g in groups] == ["teacher_moderate", "noisy", "noisy", "teacher_moderate"]
    assert group_weights(groups, conf).tolist() == [0.5, 0.0, 0.0, 0.5]
    assert group_weights(groups, SampleWeightConfig(enabled=False)).tolist() == [1.0] * 4


def test_a_copy_of_the_anchor_is_not_its_positive():
    places = torch.tensor([0, 0, 1])
    ids = torch.tensor([7, 7, 8])  # the sampler drew image 7 twice; image 8 has no positive
    sim = torch.tensor([[1.0, 1.0, 0.5], [1.0, 1.0, 0.5], [0.5, 0.5, 1.0]])
    assert positive_ranks(sim, places, places, ids, ids).tolist() == [2, 2, 3]


def test_rank_memory_makes_ranks_harder():
    """Two places, one image pair each; a remembered distractor outranks the anchor's positive."""
    d = at_angles(0, 20, 90, 70)
    batch = in_batch(d, d, torch.tensor([0, 0, 1, 1]))
    memory = RankMemory(batches=2)
    conf = SampleWeightConfig(right_rank=1, noisy_rank=5)
    assert [GROUPS[g] for g in sample_groups(batch, memory.keys(batch), conf)] == ["both_right"] * 4
    # another place: to the student between images 0 and 1, to the teacher far from every anchor's positive
    memory.push(Keys(at_angles(45), at_angles(10), torch.tensor([9]), torch.tensor([99])))
    keys = memory.keys(batch)
    assert len(keys.ids) == 5
    groups = [GROUPS[g] for g in sample_groups(batch, keys, conf)]
    assert groups[:2] == ["teacher_right_student_wrong"] * 2 and groups[2:] == ["both_right"] * 2
    for step in range(3):
        memory.push(Keys(d[:1], d[:1], torch.tensor([10 + step]), torch.tensor([100 + step])))
    assert len(memory.keys(batch).ids) == 4 + 2  # only the last two batches are kept
    nothing = RankMemory(batches=0)
    nothing.push(batch)
    assert len(nothing.keys(batch).ids) == 4
