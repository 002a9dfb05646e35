import pytest
import torch
import torch.nn.functional as F

from structvpr_edge.train.losses import MultiSimilarityConfig, mask_loss, multi_similarity_loss, relational_kd, triplet_margin_loss
from structvpr_edge.train.weights import GROUPS, SampleWeightConfig, group_weights, positive_ranks, sample_groups


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


def test_positive_ranks_and_sample_groups():
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([[1, .9, .1, .1], [.9, 1, .1, .1], [.1, .1, 1, .9], [.1, .1, .9, 1]])
    bad = torch.tensor([[1, .1, .9, .2], [.5, 1, .2, .9], [.9, .2, 1, .1], [.2, .9, .5, 1]])
    assert positive_ranks(good, labels).tolist() == [1, 1, 1, 1]
    assert positive_ranks(bad, labels).tolist() == [3, 2, 3, 2]
    conf = SampleWeightConfig(right_rank=1, noisy_rank=2)
    groups = sample_groups(teacher_sim=good, student_sim=bad, labels=labels, conf=conf)
    assert [GROUPS[g] for g in groups] == ["teacher_right_student_wrong"] * 4
    groups = sample_groups(teacher_sim=bad, student_sim=good, labels=labels, conf=conf)
    assert [GROUPS[g] for g in groups] == ["noisy", "teacher_moderate", "noisy", "teacher_moderate"]
    assert group_weights(groups, conf).tolist() == [0.0, 0.5, 0.0, 0.5]
    assert group_weights(groups, SampleWeightConfig(enabled=False)).tolist() == [1.0] * 4
