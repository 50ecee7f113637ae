import os

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


def test_every_output_name_a_command_writes_is_recognised_and_an_unknown_suffix_is_refused(tmp_path):
    from cvtool.io.outputs import is_output_name

    written = ["a.json", "a.classify.mp4", "a.detect.jpg", "a.detect.mp4", "a.crop012-traffic_light.jpg",
               "a.mask.png", "a.mask-person.png", "a.overlay.png", "a.overlay.jpg", "a.overlay.jpeg", "a.segment.mp4",
               "a-0123abcd.faces.jpg", "a.faces.mp4", "a.vs.b.jpg", "a.stylized.png", "a.stylized.mp4", "a.step0100.png"]
    assert [n for n in written if not is_output_name(n)] == []
    assert [n for n in ("a.jpg", "a.png", "mask.png", "a.detect.png", "a.crop1-x.jpg", "a.mp4") if is_output_name(n)] == []
    with pytest.raises(ValueError, match="not in cvtool.io.outputs"):
        OutputNamer(tmp_path, ".new-kind.png")


def test_outputs_never_land_on_any_input_of_the_batch(tmp_path):
    from cvtool.io.outputs import protecting

    (tmp_path / "photo.detect.jpg").write_bytes(b"an input")
    with protecting([tmp_path / "photo.jpg", tmp_path / "photo.detect.jpg"]):
        with pytest.raises(InputError, match="would overwrite an input of this batch") as raised:
            OutputNamer(tmp_path, ".detect.jpg")("photo.jpg")
        assert raised.value.path == "photo.jpg"  # the error belongs to the input whose output it is
        with pytest.raises(InputError, match="would overwrite an input of this batch"):
            atomic_write_text(tmp_path / "photo.detect.jpg", "x")
    atomic_write_text(tmp_path / "elsewhere.txt", "x")  # outside the block nothing is protected
    assert (tmp_path / "photo.detect.jpg").read_bytes() == b"an input"


def test_a_failed_write_is_an_input_error_and_still_an_oserror(tmp_path):
    from cvtool.io.atomic import WriteError

    (tmp_path / "taken").mkdir()
    with pytest.raises(WriteError) as raised:
        atomic_write_text(tmp_path / "taken", "x")
    assert isinstance(raised.value, InputError) and isinstance(raised.value, OSError)
    assert raised.value.reason == f"cannot write {tmp_path / 'taken'} (is a directory)"
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # the temp file is gone


def test_check_out_dir_creates_and_probes_the_folder(tmp_path):
    from cvtool.errors import UsageError
    from cvtool.io.outputs import check_out_dir

    check_out_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []  # probe removed
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="exists and is not a directory"):
        check_out_dir(tmp_path / "f")
    with pytest.raises(UsageError, match=r"--skip-existing needs --out DIR"):
        check_out_dir(None, skip_existing=True)


def test_a_temp_file_left_by_a_killed_run_is_removed_by_the_next_one(tmp_path):
    """SIGKILL leaves an atomic write's temp file behind; the next run's --out check removes it, and only it."""
    import subprocess
    import sys

    from cvtool.io.atomic import atomic_open
    from cvtool.io.outputs import check_out_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    stale = tmp_path / f".a.detect.jpg.cvtool-{pid}-x1y2.tmp"
    stale.write_bytes(b"half an image")
    mine = tmp_path / f".b.detect.jpg.cvtool-{os.getpid()}-z3.tmp"  # a live writer's: kept
    mine.write_bytes(b"being written")
    user = tmp_path / ".hidden.tmp"
    user.write_bytes(b"not ours")
    check_out_dir(tmp_path)
    assert not stale.exists() and mine.exists() and user.exists()
    with atomic_open(tmp_path / "c.json", "w") as handle:  # and atomic writes name their temp files that way
        names = [p.name for p in tmp_path.iterdir() if p.name.startswith(".c.json.")]
        handle.write("{}")
    assert len(names) == 1 and names[0].startswith(f".c.json.cvtool-{os.getpid()}-")


@pytest.mark.parametrize("source, name", [
    ("photos/cat.jpg", "cat.detect.jpg"),
    ("https://example.com/img/cat.jpg?size=2&x=/y", "cat.detect.jpg"),
    ("https://example.com/", "download.detect.jpg"),
    ("-", "stdin.detect.jpg"),
])
def test_output_names_for_files_urls_and_stdin(tmp_path, source, name):
    from cvtool.io.outputs import OutputNamer

    assert OutputNamer(tmp_path, ".detect.jpg")(source) == tmp_path / name
