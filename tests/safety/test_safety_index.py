"""Image index loading and validation."""

import json

import pytest

from bpo.errors import BpoError, RecordError
from bpo.safety.index import load_index


@pytest.fixture
def root(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (images / name).write_bytes(b"png")
    return images


def write_csv(tmp_path, *lines):
    path = tmp_path / "index.csv"
    path.write_text("entity,type,image,aliases\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_csv_with_aliases_and_lookup(tmp_path, root):
    path = write_csv(tmp_path, "Acme Corp,ORG,a.png,Acme|ACME Inc", "Zara  Quill,person,b.png,")
    idx = load_index(path, root)
    acme = idx.lookup("acme")
    assert (acme.entity, acme.type, acme.image, acme.aliases, acme.where) == (
        "Acme Corp", "ORG", "a.png", ("Acme", "ACME Inc"), f"{path}:2")
    assert idx.lookup("ZARA QUILL").type == "PER"      # long type names and whitespace are normalised
    assert idx.lookup("Nobody") is None
    assert idx.report()["entries"] == 2 and idx.report()["problems"] == []


def test_jsonl_with_alias_lists(tmp_path, root):
    path = tmp_path / "index.jsonl"
    path.write_text(json.dumps({"entity": "Zorb", "type": "LOC", "image": "c.png", "aliases": ["Zorbville"]}) + "\n",
                    encoding="utf-8")
    assert load_index(path, root).lookup("zorbville").entity == "Zorb"


def test_missing_image_is_reported_with_line_or_kept_without_image(tmp_path, root):
    path = write_csv(tmp_path, "Acme,ORG,a.png,", "Zorb,LOC,missing.png,")
    with pytest.raises(RecordError, match=r"index.csv:3: image 'missing.png' for 'Zorb' not found"):
        load_index(path, root)
    idx = load_index(path, root, on_error="skip")
    assert idx.lookup("Zorb").image is None   # still known, so the build can count "no_image"
    assert idx.report()["missing_image"] == 1 and idx.report()["with_image"] == 1
    assert "index.csv:3" in idx.problems[0]


def test_conflicting_types_name_both_lines(tmp_path, root):
    path = write_csv(tmp_path, "Acme,ORG,a.png,", "Zorb,LOC,b.png,", "acme,PER,c.png,")
    with pytest.raises(RecordError) as err:
        load_index(path, root)
    assert str(err.value).startswith(f"{path}:4: entity 'acme' has type PER here but ORG at {path}:2")
    idx = load_index(path, root, on_error="skip")
    assert idx.lookup("Acme") is None and idx.lookup("Zorb") is not None   # we cannot tell which type is right
    assert idx.report()["conflicting_type"] == 1


def test_escaping_or_absolute_paths_are_always_fatal(tmp_path, root):
    (tmp_path / "secret.png").write_bytes(b"x")
    for bad in ("../secret.png", "/etc/passwd"):
        path = write_csv(tmp_path, f"Acme,ORG,{bad},")
        with pytest.raises(RecordError, match="escapes the image root|is absolute"):
            load_index(path, root, on_error="skip")


def test_invalid_rows(tmp_path, root):
    path = write_csv(tmp_path, "Acme,COMPANY,a.png,", ",ORG,b.png,", "Zorb,LOC,c.png,")
    with pytest.raises(RecordError, match=r"index.csv:2: type 'COMPANY' of 'Acme' is not one of PER, ORG, LOC, MISC"):
        load_index(path, root)
    idx = load_index(path, root, on_error="skip")
    assert len(idx) == 1 and idx.report()["invalid_row"] == 2
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("name,type,image\nAcme,ORG,a.png\n", encoding="utf-8")
    with pytest.raises(BpoError, match="bad.csv:1: missing column.s. entity"):
        load_index(bad_header, root)
    with pytest.raises(BpoError, match="not a directory"):
        load_index(path, tmp_path / "nope")


def test_duplicates_and_ambiguous_aliases(tmp_path, root):
    path = write_csv(tmp_path, "Acme,ORG,a.png,Big A|Zorb", "Acme,ORG,b.png,", "Zorb,LOC,c.png,Big A")
    idx = load_index(path, root)
    assert idx.lookup("Acme").image == "a.png"               # first image wins
    assert idx.lookup("Zorb").entity == "Zorb"               # a name beats another entity's alias
    assert idx.lookup("Big A") is None                       # shared alias: dropped from both
    assert idx.lookup("Acme").aliases == ()
    report = idx.report()
    assert (report["duplicate_entity"], report["alias_is_other_entity"], report["ambiguous_alias"]) == (1, 1, 2)
