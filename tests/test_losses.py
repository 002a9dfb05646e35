import numpy as np
import pytest
import torch
import torch.nn.functional as F

from structvpr_edge.models.alignment import SemanticAlignment
from structvpr_edge.models.global_student import GlobalStudent, GlobalStudentConfig
from structvpr_edge.models.student import StructVPRStudent, StudentConfig
from structvpr_edge.models.teacher import AlignedOutput, SegTeacher, TeacherConfig
from structvpr_edge.train.config import DistillConfig, OldConfigWarning, TrainConfig, load_config, recipe
from structvpr_edge.train.losses import MultiSimilarityConfig, mask_loss, multi_similarity_loss, relational_kd, triplet_margin_loss
from structvpr_edge.errors import ConfigError
from structvpr_edge.train.distill import (FeatureProjector, aligned_group_sims, feature_kd, relational_terms, similarity_kd,
                                          teacher_ranked_negatives)
from structvpr_edge.train.objective import Batch, objective, part_values
from structvpr_edge.train.weights import GROUPS, Keys, RankMemory, SampleWeightConfig, group_weights, positive_ranks, sample_groups


def _clustered(noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 16), dim=1)
    labels = torch.arange(4).repeat_interleave(3)
    return F.normalize(centres[labels] + noise * torch.randn(12, 16), dim=1), labels


@pytest.mark.parametrize("loss", [lambda d, y: multi_similarity_loss(d, y, MultiSimilarityConfig()), lambda d, y: triplet_margin_loss(d, y, 0.1)])
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


def hand_kd(student_sim: np.ndarray, teacher_sim: np.ndarray, tau: float) -> np.ndarray:
    """Per anchor i: KL(p || q), p and q the softmax of row i over the other images j != i."""
    result = []
    for i in range(len(student_sim)):
        others = [j for j in range(len(student_sim)) if j != i]
        p = np.exp(teacher_sim[i, others] / tau) / np.exp(teacher_sim[i, others] / tau).sum()
        q = np.exp(student_sim[i, others] / tau) / np.exp(student_sim[i, others] / tau).sum()
        result.append(np.sum(p * np.log(p / q)))
    return np.array(result)


def hand_group_sim(parts: dict, k: int, gamma: float) -> np.ndarray:
    """<d_ak, d_bk> (p_ak p_bk)^gamma for unit group vectors d and presences p."""
    vecs = parts["groups"][:, k] / np.linalg.norm(parts["groups"][:, k], axis=1, keepdims=True)
    scale = parts["presence"][:, k] ** gamma
    return (vecs @ vecs.T) * np.outer(scale, scale)


def random_parts(rng: np.random.Generator, batch: int = 4, groups: int = 2, dim: int = 3) -> tuple[dict, AlignedOutput]:
    desc = rng.normal(size=(batch, 5))
    arrays = {"descriptor": desc / np.linalg.norm(desc, axis=1, keepdims=True), "groups": rng.normal(size=(batch, groups, dim)),
              "presence": rng.uniform(0.05, 0.6, size=(batch, groups))}
    t = {name: torch.tensor(value, dtype=torch.float32) for name, value in arrays.items()}
    return arrays, AlignedOutput(t["descriptor"], t["descriptor"], t["groups"], t["presence"])


def test_distillation_terms_match_a_hand_computation():
    """B = 4 images, K = 2 groups: KD on the descriptor similarity plus the mean over groups of KD
    on each group's presence-weighted similarity (each model's own presence power)."""
    rng = np.random.default_rng(3)
    (student, student_parts), (teacher, teacher_parts) = random_parts(rng), random_parts(rng)
    student_model = StructVPRStudent(StudentConfig(imagenet=False, presence_power=0.5), num_groups=2)
    teacher_model = SegTeacher(TeacherConfig(presence_power=0.25), num_groups=2)
    tau, group_weight = 0.5, 0.7
    config = TrainConfig(distill=DistillConfig(temperature=tau, group_weight=group_weight))
    global_kd = hand_kd(student["descriptor"] @ student["descriptor"].T, teacher["descriptor"] @ teacher["descriptor"].T, tau)
    group_kd = [hand_kd(hand_group_sim(student, k, 0.5), hand_group_sim(teacher, k, 0.25), tau) for k in range(2)]
    expected = global_kd + group_weight * np.mean(group_kd, axis=0)
    got = relational_terms(student_parts, teacher_parts, student_model, teacher_model, config.distill)
    assert got.shape == (4,) and np.allclose(got.detach().numpy(), expected, rtol=1e-4, atol=1e-7)
    assert np.all(np.array(group_kd) > 1e-3)  # the group term is not vanishingly small here
    global_only = TrainConfig(distill=DistillConfig(temperature=tau, per_group=False))
    assert np.allclose(relational_terms(student_parts, teacher_parts, student_model, teacher_model, global_only.distill).numpy(), global_kd, rtol=1e-4)
    plain = GlobalStudent(GlobalStudentConfig(imagenet=False))  # no label groups: the descriptor term only
    assert np.allclose(relational_terms(student_parts, teacher_parts, plain, teacher_model, config.distill).numpy(), global_kd, rtol=1e-4)


def test_group_sims_are_the_terms_of_the_aligned_similarity():
    """w_0 <g_a, g_b> + sum_k w_k sims_k, cosine-normalised, is the descriptors' inner product."""
    torch.manual_seed(0)
    alignment = SemanticAlignment(num_groups=3, presence_power=0.5)
    with torch.no_grad():
        alignment.importance_logit.copy_(torch.randn(4))
    global_vec, group_vecs, presence = torch.randn(5, 4), torch.randn(5, 3, 6), torch.rand(5, 3)
    descriptor = alignment(global_vec, group_vecs, presence)
    w = alignment.importance()
    g = F.normalize(global_vec, dim=1)
    parts = AlignedOutput(descriptor, global_vec, group_vecs, presence)
    total = w[0] * g @ g.T + (w[1:, None, None] * aligned_group_sims(parts, alignment)).sum(dim=0)
    cosine = total / torch.sqrt(total.diagonal()[:, None] * total.diagonal()[None, :])
    assert torch.allclose(descriptor @ descriptor.T, cosine, atol=1e-5)


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


def test_similarity_kd_matches_a_hand_computation():
    rng = np.random.default_rng(5)
    (student, student_parts), (teacher, teacher_parts) = random_parts(rng, batch=5), random_parts(rng, batch=5)
    s, t = student["descriptor"] @ student["descriptor"].T, teacher["descriptor"] @ teacher["descriptor"].T
    expected = [np.mean([(s[i, j] - t[i, j]) ** 2 for j in range(5) if j != i]) for i in range(5)]
    got = similarity_kd(student_parts, teacher_parts).numpy()
    assert np.allclose(got, expected, rtol=1e-5) and np.all(got > 1e-3)
    assert np.allclose(similarity_kd(teacher_parts, teacher_parts).numpy(), 0, atol=1e-7)


def hand_teacher_negatives(s: np.ndarray, t: np.ndarray, places: list[int]) -> np.ndarray:
    """Per anchor: p = the teacher's best other image of the place; among negatives the teacher
    ranks below p, n = the student's most similar; hinge (t_ap - t_an) - (s_ap - s_an)."""
    result = []
    for a in range(len(places)):
        positives = [j for j in range(len(places)) if j != a and places[j] == places[a]]
        if not positives:
            result.append(0.0)
            continue
        p = max(positives, key=lambda j: t[a, j])
        trusted = [j for j in range(len(places)) if places[j] != places[a] and t[a, j] < t[a, p]]
        if not trusted:
            result.append(0.0)
            continue
        n = max(trusted, key=lambda j: s[a, j])
        result.append(max(0.0, (t[a, p] - t[a, n]) - (s[a, p] - s[a, n])))
    return np.array(result)


def test_teacher_ranked_negatives_match_a_hand_computation():
    rng = np.random.default_rng(11)
    places = [0, 0, 1, 1, 2, 2, 3, 4]  # places 3 and 4: anchors without a positive
    (student, student_parts), (teacher, teacher_parts) = random_parts(rng, batch=8), random_parts(rng, batch=8)
    s, t = student["descriptor"] @ student["descriptor"].T, teacher["descriptor"] @ teacher["descriptor"].T
    expected = hand_teacher_negatives(s, t, places)
    ids = torch.arange(len(places))
    got = teacher_ranked_negatives(student_parts, teacher_parts, torch.tensor(places), ids).numpy()
    assert np.allclose(got, expected, atol=1e-6)
    assert np.count_nonzero(expected[:6]) >= 2 and np.all(got[6:] == 0)
    # a student that copies the teacher's similarities keeps every margin: no loss
    assert np.allclose(teacher_ranked_negatives(teacher_parts, teacher_parts, torch.tensor(places), ids).numpy(), 0, atol=1e-7)


def test_feature_kd_weights_groups_by_teacher_presence():
    teacher_model = SegTeacher(TeacherConfig(), num_groups=2)
    student_model = StructVPRStudent(StudentConfig(imagenet=False), num_groups=2)
    projector = FeatureProjector(student_model, teacher_model)
    torch.manual_seed(0)
    parts = AlignedOutput(torch.zeros(3, 8), torch.randn(3, 128), torch.randn(3, 2, 64), torch.rand(3, 2))
    global_vec, group_vecs = projector(parts)
    teacher = AlignedOutput(torch.zeros(3, 8), 2 * global_vec.detach(), group_vecs.detach().clone(), torch.tensor([[1.0, 0.0]] * 3))
    assert torch.allclose(feature_kd((global_vec, group_vecs), teacher), torch.zeros(3), atol=1e-6)  # same directions: 0
    teacher.group_vecs[:, 1] = -teacher.group_vecs[:, 1]  # a group the teacher does not see: still 0
    assert torch.allclose(feature_kd((global_vec, group_vecs), teacher), torch.zeros(3), atol=1e-6)
    teacher.group_vecs[:, 0] = -teacher.group_vecs[:, 0]  # the present group points away: distance 2, half weight
    assert torch.allclose(feature_kd((global_vec, group_vecs), teacher), torch.ones(3), atol=1e-5)
    with pytest.raises(ConfigError, match="label-aware student"):
        FeatureProjector(GlobalStudent(GlobalStudentConfig(imagenet=False)), teacher_model)


def fixed_batch(batch: int = 8) -> tuple[dict, dict, Batch, StructVPRStudent, SegTeacher]:
    """A StructVPR++ batch of random outputs, student and teacher, 4 places of 2 images, mixed sample groups."""
    rng = np.random.default_rng(7)
    (student, student_parts), (teacher, teacher_parts) = random_parts(rng, batch=batch), random_parts(rng, batch=batch)
    student_parts.mask_logits = torch.tensor(rng.normal(size=(batch, 2, 3, 4)), dtype=torch.float32)
    fractions = torch.tensor(rng.dirichlet(np.ones(2), size=(batch, 6, 8)).transpose(0, 3, 1, 2), dtype=torch.float32)
    places = torch.arange(batch // 2).repeat_interleave(2)
    groups = torch.tensor([0, 1, 2, 3, 1, 1, 0, 2])[:batch]
    torch.manual_seed(0)
    models = StructVPRStudent(StudentConfig(imagenet=False, presence_power=0.5), num_groups=2), SegTeacher(TeacherConfig(presence_power=0.25), num_groups=2)
    return student, teacher, Batch(student_parts, places, torch.arange(batch), fractions, teacher_parts, groups), *models


def old_formula(student: dict, teacher: dict, batch: Batch, step: int, distill: dict, mask_weight: float, warmup: int) -> float:
    """The objective as config version 1 wrote it (docs/method.md before issue 27), by hand:
    L_MS + lambda_mask L_mask + s(t) mean_i w_i (weight tau^2 (KL_i + g mean_k KL_ik) + lambda_sim S_i + lambda_neg N_i)."""
    tau, weight = distill["temperature"], distill["weight"]
    s, t = student["descriptor"] @ student["descriptor"].T, teacher["descriptor"] @ teacher["descriptor"].T
    group_kd = np.mean([hand_kd(hand_group_sim(student, k, 0.5), hand_group_sim(teacher, k, 0.25), tau) for k in range(2)], axis=0)
    relational = tau**2 * (hand_kd(s, t, tau) + distill["group_weight"] * group_kd)
    similarity = np.array([np.mean([(s[i, j] - t[i, j]) ** 2 for j in range(len(s)) if j != i]) for i in range(len(s))])
    negatives = hand_teacher_negatives(s, t, batch.places.tolist())
    sample_weights = np.array([2.0, 1.0, 0.5, 0.0])[batch.sample_groups.numpy()]  # SampleWeightConfig's defaults, by group
    per_anchor = weight * relational + distill["similarity_weight"] * similarity + distill["negative_weight"] * negatives
    metric = multi_similarity_loss(batch.parts.descriptor, batch.places, MultiSimilarityConfig()).item()
    mask = mask_loss(batch.parts.mask_logits, batch.fractions).item()
    return metric + mask_weight * mask + min(1.0, step / warmup) * np.mean(sample_weights * per_anchor)


@pytest.mark.parametrize("distill", [
    {"weight": 100, "temperature": 0.1, "group_weight": 1.0, "similarity_weight": 0.0, "negative_weight": 5.0},  # structvprpp.yaml
    {"weight": 30, "temperature": 0.2, "group_weight": 0.5, "similarity_weight": 2.0, "negative_weight": 1.0},
])
def test_the_objective_of_an_old_config_is_the_old_formula(tmp_path, distill):
    """A config of version 1 (distill.weight multiplied tau^2 KL) is converted on reading, and the
    objective of a fixed batch built from it is what the old formula gives, at every step of the warm-up."""
    student, teacher, batch, student_model, teacher_model = fixed_batch()
    path = tmp_path / "old.yaml"
    path.write_text(f"mode: structvpr++\ndistill: {distill | {'warmup_steps': 4}}\n")
    with pytest.warns(OldConfigWarning, match="distill.weight"):
        config = load_config(path)
    assert config.distill.weight == pytest.approx(distill["weight"] * distill["temperature"] ** 2, rel=1e-12)
    terms = objective(config, recipe("structvpr++", True), config.optim, student_model, teacher_model)
    assert [t.name for t in terms] == ["metric", "mask", "distill/relational", *(["distill/similarity"] * (distill["similarity_weight"] > 0)), "distill/negatives"]
    for step in (0, 1, 4, 9):
        got = sum(part_values(terms, batch, step).values()).item()
        assert got == pytest.approx(old_formula(student, teacher, batch, step, distill, 0.5, 4), rel=1e-5, abs=1e-7)


def test_each_weight_scales_its_own_term_and_weight_0_drops_it():
    student, teacher, batch, student_model, teacher_model = fixed_batch()
    config = load_config(None, {"mode": "structvpr++", "distill": {"weight": 1.0, "negative_weight": 3.0}})
    parts = part_values(objective(config, recipe("structvpr++", True), config.optim, student_model, teacher_model), batch, 10)
    doubled = load_config(None, {"mode": "structvpr++", "distill": {"weight": 2.0, "negative_weight": 3.0}})
    relational_only = load_config(None, {"mode": "structvpr++", "distill": {"weight": 1.0}})
    negatives_only = load_config(None, {"mode": "structvpr++", "distill": {"weight": 0.0, "negative_weight": 3.0}})

    def distill(conf: TrainConfig) -> float:
        return part_values(objective(conf, recipe("structvpr++", True), conf.optim, student_model, teacher_model), batch, 10)["distill"].item()

    assert distill(doubled) - parts["distill"].item() == pytest.approx(distill(relational_only), rel=1e-5)
    assert distill(relational_only) + distill(negatives_only) == pytest.approx(parts["distill"].item(), rel=1e-5)
    assert [t.name for t in objective(negatives_only, recipe("structvpr++", True), config.optim, student_model, teacher_model)] == ["metric", "mask", "distill/negatives"]
    no_teacher = objective(config, recipe("structvpr++", False), config.optim, student_model, None)
    assert set(part_values(no_teacher, batch, 10)) == {"metric", "mask"}


def test_distill_real_weight_scales_only_the_real_anchors():
    """The distillation terms are a weighted mean over anchors: real_weight w moves each real anchor's
    share from 1 to w, so the distill part is linear in w, and at 1 a batch with no real flags is unchanged."""
    student, teacher, batch, student_model, teacher_model = fixed_batch()

    def distill(real_weight: float, real: torch.Tensor | None) -> float:
        conf = load_config(None, {"mode": "structvpr++", "distill": {"negative_weight": 3.0, "real_weight": real_weight}})
        batch.real = real
        return part_values(objective(conf, recipe("structvpr++", True), conf.optim, student_model, teacher_model), batch, 10)["distill"].item()

    real = torch.tensor([False] * 4 + [True] * 4)  # the last two places are real frames
    synthetic_only, full = distill(0.0, real), distill(1.0, real)
    assert full == pytest.approx(distill(1.0, None), rel=1e-6)
    assert 0 < synthetic_only < full
    assert distill(0.5, real) == pytest.approx((synthetic_only + full) / 2, rel=1e-5)
    assert distill(0.0, torch.ones(8, dtype=torch.bool)) == 0.0
    with pytest.raises(ConfigError, match="real_weight"):
        load_config(None, {"mode": "structvpr++", "distill": {"real_weight": -1.0}}).validate()


METRIC_LOSSES = [lambda d, y, n: multi_similarity_loss(d, y, MultiSimilarityConfig(), n), lambda d, y, n: triplet_margin_loss(d, y, 0.1, n)]


def three_places(closeness: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Places 0 and 2 apart; place 1 turned ``closeness`` of the way onto place 0 (never toward 2),
    two images each. Returns descriptors, labels and the pairs of places 0 and 1 as neighbours."""
    e = torch.eye(4)
    one = F.normalize((1 - closeness) * e[1] + closeness * e[0], dim=0)
    descriptors = F.normalize(torch.stack([e[0], e[0] + 0.1 * e[3], one, one + 0.1 * e[3], e[2], e[2] + 0.1 * e[3]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    near = (labels[:, None] <= 1) & (labels[None, :] <= 1) & (labels[:, None] != labels[None, :])
    return descriptors, labels, near


@pytest.mark.parametrize("loss", METRIC_LOSSES)
def test_a_neighbouring_place_is_no_negative_in_the_metric_losses(loss):
    """Moving place 1 onto its neighbour 0 costs nothing once the pair is masked, and costs without the mask."""
    apart, labels, near = three_places(0.0)
    onto, _, _ = three_places(0.95)
    assert torch.isclose(loss(apart, labels, near), loss(onto, labels, near))
    assert loss(onto, labels, None) > loss(apart, labels, None) + 0.01


@pytest.mark.parametrize("loss", METRIC_LOSSES)
def test_a_batch_without_a_usable_anchor_costs_0_not_nan(loss):
    """Every other place a neighbour (or one place in the batch): no anchor has both a positive and a
    negative, and the loss is 0 with a zero gradient, not the NaN that would poison the weights."""
    descriptors, labels, _ = three_places(0.0)
    descriptors.requires_grad_(True)
    everyone_near = labels[:, None] != labels[None, :]
    for value in (loss(descriptors, labels, everyone_near), loss(descriptors, torch.zeros_like(labels), None)):
        value.backward()
        assert value.item() == 0 and torch.equal(descriptors.grad, torch.zeros_like(descriptors))


def test_a_neighbouring_place_does_not_outrank_the_positive():
    descriptors, labels, near = three_places(0.95)
    ids = torch.arange(6)
    sim = descriptors @ descriptors.T
    assert (positive_ranks(sim, labels, labels, ids, ids)[:4] > 1).all()  # the neighbour's images come first
    assert positive_ranks(sim, labels, labels, ids, ids, near).tolist() == [1] * 6
    conf = SampleWeightConfig(right_rank=1, noisy_rank=2)
    batch = in_batch(descriptors, descriptors, labels)
    assert [GROUPS[g] for g in sample_groups(batch, batch, conf)][:4] == ["teacher_moderate"] * 4
    assert [GROUPS[g] for g in sample_groups(batch, batch, conf, near)] == ["both_right"] * 6


def test_a_neighbouring_place_is_no_teacher_ranked_negative():
    rng = np.random.default_rng(3)
    places = torch.tensor([0, 0, 1, 1, 2, 2])
    (student, student_parts), (teacher, teacher_parts) = random_parts(rng, batch=6), random_parts(rng, batch=6)
    near = (places[:, None] <= 1) & (places[None, :] <= 1) & (places[:, None] != places[None, :])
    ids = torch.arange(6)
    s, t = student["descriptor"] @ student["descriptor"].T, teacher["descriptor"] @ teacher["descriptor"].T
    # with places 0 and 1 neighbours, their anchors' only negatives are place 2's: a batch without the neighbour
    for anchors, keep in (([0, 1], [0, 1, 4, 5]), ([2, 3], [2, 3, 4, 5])):
        expected = hand_teacher_negatives(s[np.ix_(keep, keep)], t[np.ix_(keep, keep)], places[keep].tolist())[:2]
        got = teacher_ranked_negatives(student_parts, teacher_parts, places, ids, near)[anchors].numpy()
        assert np.allclose(got, expected, atol=1e-6)
    assert not np.allclose(teacher_ranked_negatives(student_parts, teacher_parts, places, ids).numpy(),
                           teacher_ranked_negatives(student_parts, teacher_parts, places, ids, near).numpy())
