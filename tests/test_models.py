import hashlib
import re

import torch
import torch.nn.functional as F

from structvpr_edge.labels import LABEL_GROUPS
from structvpr_edge.layout import DescriptorLayout
from structvpr_edge.models.alignment import SemanticAlignment
from structvpr_edge.models.checkpoint import SHIPPED, SHIPPED_DIR, layout_of, load_checkpoint, save_checkpoint, ship
from structvpr_edge.models.efficientnet_lite import MEAN_RGB
from structvpr_edge.models.global_student import GlobalStudent, GlobalStudentConfig
from structvpr_edge.models.student import StructVPRStudent, StudentConfig
from structvpr_edge.models.teacher import SegTeacher, TeacherConfig
from structvpr_edge.errors import ConfigError, ModelError
import pytest


def test_one_inner_product_is_the_aligned_similarity():
    torch.manual_seed(0)
    alignment = SemanticAlignment(3)
    alignment.importance_logit.data = torch.randn(4)
    g, d, p = torch.randn(2, 5), torch.randn(2, 3, 4), torch.softmax(torch.randn(2, 3), dim=1)
    descriptor = alignment(g, d, p)
    w = alignment.importance()
    gn, dn = F.normalize(g, dim=1), F.normalize(d, dim=2)

    def aligned(a: int, b: int) -> torch.Tensor:
        return w[0] * gn[a] @ gn[b] + sum(w[k + 1] * (p[a, k] * p[b, k]).sqrt() * dn[a, k] @ dn[b, k] for k in range(3))

    expected = aligned(0, 1) / (aligned(0, 0) * aligned(1, 1)).sqrt()
    assert torch.allclose(descriptor[0] @ descriptor[1], expected, atol=1e-6)


def test_absent_group_does_not_contribute():
    alignment = SemanticAlignment(2)
    g = torch.randn(2, 4)
    d = torch.randn(2, 2, 3)
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    changed = d.clone()
    changed[1, 1] = -d[0, 1]  # the absent group disagrees completely
    assert torch.allclose(alignment(g, d, p)[0] @ alignment(g, d, p)[1], alignment(g, changed, p)[0] @ alignment(g, changed, p)[1], atol=1e-5)


def test_student_shapes_and_layout():
    model = StructVPRStudent(StudentConfig(imagenet=False, global_dim=64, group_dim=32)).eval()
    parts = model.forward_parts(torch.randn(2, 3, 48, 64))
    assert parts.descriptor.shape == (2, 64 + 32 * len(LABEL_GROUPS))
    assert parts.mask_logits.shape == (2, len(LABEL_GROUPS), 3, 4)
    assert torch.allclose(parts.presence.sum(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(parts.descriptor.norm(dim=1), torch.ones(2), atol=1e-5)
    layout = layout_of(model)
    assert layout.dim == 64 + 32 * 6 and [s.name for s in layout.segments] == ["global", *LABEL_GROUPS]
    assert DescriptorLayout.from_dict(layout.to_dict()).hash() == layout.hash()


def test_cached_frozen_path_equals_full_forward():
    model = StructVPRStudent(StudentConfig(imagenet=False, frozen_blocks=5)).eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        full = model(x)
        cached = model.forward_parts(model.backbone.forward_frozen(x), from_frozen=True).descriptor
    assert torch.allclose(full, cached, atol=1e-6)


def test_teacher_presence_from_label_fractions():
    teacher = SegTeacher(TeacherConfig()).eval()
    fractions = torch.zeros(1, 6, 48, 64)
    fractions[:, 4, :24] = 1  # sky on top
    fractions[:, 2, 24:] = 1  # ground below
    parts = teacher.forward_parts(fractions)
    assert parts.presence[0].tolist() == pytest.approx([0, 0, 0.5, 0, 0.5, 0])


def test_checkpoint_roundtrip_half_and_errors(tmp_path):
    model = StructVPRStudent(StudentConfig(imagenet=False)).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, (64, 48), {"mode": "structvpr++"}, half=True)
    loaded, meta = load_checkpoint(path)
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert F.cosine_similarity(model(x), loaded(x)).item() > 0.999
    assert meta["layout"] == layout_of(model).to_dict() and meta["input"]["size"] == [64, 48]
    assert meta["label_groups"] == list(LABEL_GROUPS)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ModelError):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("field, change", [
    ("layout", lambda p: p["layout"]["segments"][0].update(size=256)),  # a global segment of 256 over weights of 128
    ("label_groups", lambda p: p["label_groups"].reverse()),
    ("class_to_group", lambda p: p["class_to_group"].update(sky="building")),
    ("model_type", lambda p: p.pop("model_type")),
    ("model_config", lambda p: p.pop("model_config")),
    ("state_dict", lambda p: p["state_dict"].update(extra=3)),
    ("future_padding", lambda p: p["model_config"].update(future_padding=True)),  # a newer file's setting, once dropped silently
])
def test_a_checkpoint_whose_metadata_disagrees_with_its_model_or_this_code_is_refused(tmp_path, field, change):
    """The runtime slices descriptors by the file's layout and indexes groups by LABEL_GROUPS: a file
    whose tables are not the rebuilt model's and this code's must not load silently."""
    path = save_checkpoint(tmp_path / "t.pt", SegTeacher(TeacherConfig(input_size=(32, 24))), (64, 48), {})
    assert load_checkpoint(path)[1]["layout"] == layout_of(SegTeacher(TeacherConfig())).to_dict()
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    with pytest.raises(ModelError, match=rf"t\.pt: .*{field}"):
        load_checkpoint(path)


@pytest.mark.parametrize("change", [
    lambda spec: spec.update(mean=[0.485, 0.456, 0.406]),  # every reader would normalise the pixels otherwise than training did
    lambda spec: spec.update(colour="BGR"),
    lambda spec: spec.update(kind="labels"),
    lambda spec: spec.update(size=[64]),
    lambda spec: spec.update(size=[64.0, 48]),
    lambda spec: spec.pop("size"),
])
def test_a_checkpoint_whose_input_normalisation_is_not_the_models_is_refused(tmp_path, change):
    path = save_checkpoint(tmp_path / "s.pt", StructVPRStudent(StudentConfig(imagenet=False)).eval(), (64, 48), {})
    assert load_checkpoint(path)[1]["input"]["mean"] == list(MEAN_RGB)
    payload = torch.load(path, weights_only=True)
    change(payload["input"])
    torch.save(payload, path)
    with pytest.raises(ModelError, match=r"s\.pt: .*'input'"):
        load_checkpoint(path)


def test_ship_saves_half_weights_with_their_source(tmp_path):
    model = StructVPRStudent(StudentConfig(imagenet=False)).eval()
    run = save_checkpoint(tmp_path / "run" / "model.pt", model, (64, 48), {"mode": "structvpr++", "seed": 2}, {"steps_done": 7})
    shipped = ship(run, "structvprpp", weights_dir=tmp_path / "weights")
    assert shipped == tmp_path / "weights" / "structvprpp.pt"
    payload = torch.load(shipped, weights_only=False)
    assert {v.dtype for v in payload["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    assert payload["shipped_from"] == str(run) and payload["steps_done"] == 7 and payload["train_config"]["seed"] == 2
    assert payload["input"]["size"] == [64, 48]
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert F.cosine_similarity(model(x), load_checkpoint(shipped)[0](x)).item() > 0.999
    with pytest.raises(ConfigError, match="unknown shipped model"):
        ship(run, "best", weights_dir=tmp_path / "weights")
    teacher = save_checkpoint(tmp_path / "teacher.pt", SegTeacher(TeacherConfig()), (64, 48), {})
    with pytest.raises(ModelError, match="'teacher' model; baseline must be 'global'"):
        ship(teacher, "baseline", weights_dir=tmp_path / "weights")
    with pytest.raises(ModelError, match="student-nokd must be"):  # a GeM student under the label-aware name
        ship(save_checkpoint(tmp_path / "gem.pt", GlobalStudent(GlobalStudentConfig(imagenet=False)), (64, 48), {}), "student-nokd",
             weights_dir=tmp_path / "weights")


def test_every_shipped_checkpoint_has_its_provenance_and_the_terms_of_its_data():
    """weights/MODELS.md names each shipped file by sha256 and says 'research use only' wherever
    the checkpoint's own recipe read CamVid: shipping a new file fails here until the page says
    where it comes from."""
    page = (SHIPPED_DIR / "MODELS.md").read_text()
    sections = dict(re.findall(r"^## `([\w-]+)`\n(.*?)(?=^## |\Z)", page, flags=re.M | re.S))
    assert sorted(sections) == sorted(SHIPPED)
    for name in SHIPPED:
        path = SHIPPED_DIR / f"{name}.pt"
        assert hashlib.sha256(path.read_bytes()).hexdigest() in sections[name], f"{name}: update weights/MODELS.md"
        _, meta = load_checkpoint(name)
        read_camvid = "camvid" in str(meta["train_config"].get("real", {}).get("root", "")).lower()
        assert ("Research use only" in sections[name]) == read_camvid, name
        assert meta["shipped_from"].rsplit("/model.pt", 1)[0] in sections[name], name
