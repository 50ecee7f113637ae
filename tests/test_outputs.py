import pytest

from cvtool.errors import InputError
from cvtool.io.atomic import atomic_open, atomic_write_text
from cvtool.io.outputs import OutputNamer


def test_names_are_predictable_and_collisions_get_a_stable_hash(tmp_path):
    namer = OutputNamer(tmp_path / "out", ".json")
    first = namer("a/photo.jpg")
    second = namer("b/photo.jpg")
    assert first == tmp_path / "out" / "photo.json"
    assert second.parent == tmp_path / "out" and second.name.startswith("photo-") and second != first
    assert namer("b/photo.jpg") == second  # asked again: same answer
    again = OutputNamer(tmp_path / "out", ".json")
    assert [again("a/photo.jpg"), again("b/photo.jpg")] == [first, second]


def test_refuses_to_name_an_output_that_is_the_input(tmp_path):
    source = tmp_path / "report.json"
    source.write_text("{}")
    with pytest.raises(InputError, match="would overwrite the input"):
        OutputNamer(tmp_path, ".json")(str(source))


def test_atomic_write_leaves_no_temp_files_and_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "deep" / "result.txt"
    atomic_write_text(target, "first")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as handle:
            handle.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["result.txt"]


def test_atomic_outputs_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    import os

    target = tmp_path / "out.txt"
    atomic_write_text(target, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
