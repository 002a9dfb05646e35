import pytest

from structvpr_edge.data.names import ImageName, format_name, parse_name
from structvpr_edge.errors import DatasetError, StructVPRError


def test_parse_standard_name():
    name = parse_name("/x/@580.50@-12.25@17@T@45.1@7.6@pano42@@93.50@@@@2019-05-01@night@.jpg")
    assert (name.east, name.north, name.heading) == (580.5, -12.25, 93.5)
    assert (name.pano_id, name.timestamp, name.note) == ("pano42", "2019-05-01", "night")


def test_format_parse_roundtrip():
    original = ImageName(east=123.45, north=678.9, heading=270.0, pano_id="p1", note="winter")
    assert parse_name(format_name(original)) == original
    assert format_name(original).split("@")[0] == "" and len(format_name(original).split("@")) == 16


@pytest.mark.parametrize(
    "bad",
    ["photo.jpg", "@1@2@.jpg", "@east@2@@@@@@@@@@@@@.jpg", "@1@@@@@@@@@@@@@@.jpg", "x@1@2@@@@@@@@@@@@@.jpg", "@nan@2@@@@@@@@@@@@@.jpg"],
)
def test_malformed_names_raise_with_file_name(bad):
    with pytest.raises(DatasetError, match=r"\.jpg"):
        parse_name(f"/data/{bad}")


def test_errors_share_one_base():
    with pytest.raises(StructVPRError):
        parse_name("nope.jpg")


def test_format_rejects_separator_in_fields():
    with pytest.raises(DatasetError):
        format_name(ImageName(east=0, north=0, note="a@b"))
