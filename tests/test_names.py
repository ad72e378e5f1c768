"""The one naming rule for outputs (refam.io.names): safe ids kept, every other name made safe
without two names ever meeting, and nothing joined outside its folder."""

import itertools
import os
from pathlib import Path

import pytest

from refam.io.names import MAX_LENGTH, NameRegistry, inside, is_safe, safe_name, slug

# ids of official layouts (RefCOCO image ids, Ref-YouTube-VOS / MeViS video and expression ids,
# DAVIS frame names) and plain file stems: written unchanged
KEPT = ["0", "00012", "a3f_1-b.x", "0a49f5265b", "bike-packing", "frame_00001", "x" * MAX_LENGTH, "photo.v2"]

# names a user or a dataset may give that must not be used as they are
UNSAFE = ["a/b", "a-b ", "a b", "a\\b", "a:b", "..", ".", "", "../../x", "/tmp/x", "C:\\x", ".hidden", "-rf",
          "trailing.", "café", "日本語", "😀", "a\x00b", "a\nb", "x" * 300, "x" * 299 + "y", "CON", "nul.txt",
          "com1", "nul.x y", "~", "a~b"]

SEPARATORS = {"/", "\\", os.sep, "\x00"}


@pytest.mark.parametrize("name", KEPT)
def test_a_safe_name_is_kept_unchanged(name):
    assert is_safe(name) and safe_name(name) == name


@pytest.mark.parametrize("name", UNSAFE, ids=repr)
def test_an_unsafe_name_becomes_one_plain_component(name):
    made = safe_name(name)
    assert not is_safe(name) and made != name
    assert not SEPARATORS & set(made) and made not in (".", "..") and not made.startswith((".", "-"))
    assert made.isascii() and made.isprintable() and len(made) <= MAX_LENGTH
    assert safe_name(name) == made  # the same name always gives the same result
    assert Path(made).name == made and not Path(made).is_absolute()


def test_different_names_never_share_a_result():
    # the names that differ only in what is replaced are the dangerous ones: a/b, a-b, a b, a\b
    names = KEPT + UNSAFE + ["a-b", "a_b", "a--b", "A b", "x" * 81, "x" * 80 + "y", "cafe", "cafe\u0301",
                             "nul", "NUL", "Nul.txt", "_", "-", "a.", "a"]
    results = {}
    for name in names:
        made = safe_name(name)
        assert made not in results, f"{name!r} and {results[made]!r} both give {made!r}"
        results[made] = name


@pytest.mark.parametrize("limit", [12, 40, MAX_LENGTH])
def test_long_names_are_cut_to_the_limit_and_stay_distinct(limit):
    names = ["x" * 300, "x" * 299 + "y", "y" + "x" * 299, "x" * (limit + 1)]
    made = [safe_name(name, limit) for name in names]
    assert all(len(m) <= limit for m in made) and len(set(made)) == len(names)


def test_the_registry_keeps_one_name_per_key_and_never_repeats_one():
    names = NameRegistry()
    assert names.name("a/photo.png", "photo") == "photo"
    assert names.name("b/photo.png", "photo") == "photo-2"  # same file name from another folder
    assert names.name("a/photo.png", "photo") == "photo"  # the same key: the same name
    assert names.name("c/Photo.png", "Photo") == "Photo-3"  # differs only in case: a file system may fold it
    assert names.name("d/photo-2.png", "photo-2") == "photo-2-2"  # a name a suffix already gave
    assert names.name("e/a b.png", "a b") != names.name("f/a-b.png", "a-b")


@pytest.mark.parametrize("wanted", [["x", "X", "x"], ["a/b", "a b", "a-b", "A-B", "a\\b"], ["..", ".", "", "_"],
                                    ["photo", "photo-2", "photo", "PHOTO-2"], ["日本", "日本語", "😀", "😁"],
                                    ["x" * 300, "x" * 300 + "!", "X" * 300]], ids=repr)
def test_the_registry_gives_distinct_names_ignoring_case(wanted):
    names = NameRegistry()
    given = [names.name(index, name) for index, name in enumerate(wanted)]
    folded = [g.casefold() for g in given]
    assert len(set(folded)) == len(wanted)
    assert all(not SEPARATORS & set(g) and g not in (".", "..") for g in given)


@pytest.mark.parametrize("parts", [("../../x",), ("..",), ("a", "..", "..", "x"), ("/tmp/x",), (os.sep,),
                                   ("a", "/etc/passwd")], ids=repr)
def test_inside_refuses_a_path_out_of_its_folder(tmp_path, parts):
    with pytest.raises(ValueError, match="outside"):
        inside(tmp_path / "out", *parts)


def test_inside_refuses_a_symbolic_link_out_and_keeps_what_is_inside(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / "escape").symlink_to(tmp_path)
    (root / "sub").mkdir()
    (root / "alias").symlink_to(root / "sub")
    with pytest.raises(ValueError, match="outside"):
        inside(root, "escape", "x.png")
    assert inside(root, "alias", "x.png") == (root / "sub" / "x.png").resolve()
    assert inside(root, "a", "b.png") == root.resolve() / "a" / "b.png"


@pytest.mark.parametrize("name", UNSAFE + KEPT, ids=repr)
def test_a_made_name_stays_inside(tmp_path, name):
    assert inside(tmp_path, safe_name(name)).parent == tmp_path.resolve()


@pytest.mark.parametrize("text, expected", [("the dog on the left", "the-dog-on-the-left"), ("Café au lait", "cafe-au-lait"),
                                            ("../../x", "x"), ("日本", "expression"), ("", "expression"),
                                            ("a " * 40, "a-" * 19 + "a")])
def test_slug_is_plain_and_readable(text, expected):
    assert slug(text) == expected


def test_every_pair_of_short_unsafe_names_differs():
    # all names of up to 3 characters from a small alphabet of troublemakers
    alphabet = ["a", "A", "-", " ", "/", "\\", ".", "~", "_", "é"]
    names = ["".join(chars) for size in range(4) for chars in itertools.product(alphabet, repeat=size)]
    made = [safe_name(name) for name in names]
    assert len(set(made)) == len(names)
    assert not any(SEPARATORS & set(m) or m in (".", "..") for m in made)
