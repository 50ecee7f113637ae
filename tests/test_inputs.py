import io

from cvtool.io.inputs import MEDIA_SUFFIXES, InputItem, iter_inputs


def _tree(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "B.PNG").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.webp").write_bytes(b"x")
    return tmp_path


def paths(items):
    return [i.path for i in items]


def test_directory_lists_images_only_sorted_and_recursive_descends(tmp_path):
    root = _tree(tmp_path)
    assert paths(iter_inputs([str(root)])) == [str(root / "B.PNG"), str(root / "a.jpg")]
    assert paths(iter_inputs([str(root)], recursive=True))[-1] == str(root / "sub" / "c.webp")


def test_directories_hold_videos_too_for_the_commands_that_take_them(tmp_path):
    root = _tree(tmp_path)
    (root / "clip.MP4").write_bytes(b"x")
    assert paths(iter_inputs([str(root)], suffixes=MEDIA_SUFFIXES)) == [
        str(root / "B.PNG"), str(root / "a.jpg"), str(root / "clip.MP4")]
    (root / "empty").mkdir()
    assert list(iter_inputs([str(root / "empty")], suffixes=MEDIA_SUFFIXES))[0].error == (
        "no image or video files in directory")


def test_explicit_file_is_tried_whatever_its_suffix(tmp_path):
    root = _tree(tmp_path)
    assert list(iter_inputs([str(root / "notes.txt")])) == [InputItem(str(root / "notes.txt"))]


def test_globs_missing_and_empty_directories_become_error_items(tmp_path):
    root = _tree(tmp_path)
    (root / "empty").mkdir()
    (root / "only_subdirs" / "deeper").mkdir(parents=True)
    items = list(iter_inputs([str(root / "*.jpg"), str(root / "*.gif"), str(root / "gone.jpg"), str(root / "empty"),
                              str(root / "only_subdirs")]))
    assert items[0] == InputItem(str(root / "a.jpg"))
    assert items[1].error == "no files match this pattern"
    assert items[2].error == "no such file or directory"
    assert items[3].error == "no image files in directory"
    assert "add --recursive" in items[4].error


def test_stdin_lines_are_expanded_lazily_and_comments_skipped(tmp_path):
    root = _tree(tmp_path)
    stdin = io.StringIO(f"# a comment\n\n{root / 'a.jpg'}\n{root / 'sub'}\n")
    assert paths(iter_inputs(["-"], stdin=stdin)) == [str(root / "a.jpg"), str(root / "sub" / "c.webp")]


def test_same_file_twice_is_processed_once(tmp_path):
    root = _tree(tmp_path)
    assert paths(iter_inputs([str(root / "a.jpg"), str(root / "." / "a.jpg"), str(root)])) == [
        str(root / "a.jpg"), str(root / "B.PNG")]


def _as_output(path) -> None:
    """Write `path` the way a command writes an output (so it is listed in the folder's .cvtool-outputs)."""
    from cvtool.io.atomic import atomic_write_bytes
    from cvtool.io.outputs import claim_output

    claim_output(path)
    atomic_write_bytes(path, b"x")


def test_previous_outputs_in_out_are_not_inputs_unless_named_on_the_command_line(tmp_path):
    from cvtool.io.inputs import expand_inputs

    (tmp_path / "foo.jpg").write_bytes(b"x")
    for name in ("foo.detect.jpg", "foo.crop000-person.jpg", "foo.mask.png", "foo.mask-traffic_light.png",
                 "foo.overlay.jpeg", "foo-1a2b3c4d.faces.jpg", "foo.vs.bar.jpg", "foo.stylized.png", "foo.step0010.png",
                 "foo.detect.mp4"):
        _as_output(tmp_path / name)
    told = []
    items, total = expand_inputs([str(tmp_path)], out_dir=tmp_path, on_previous_outputs=told.append)
    assert paths(items) == [str(tmp_path / "foo.jpg")] and total == 1 and told == [10]
    # the same files are inputs when --out is elsewhere, or when named explicitly
    assert len(paths(expand_inputs([str(tmp_path)], out_dir=tmp_path / "elsewhere")[0])) == 11
    assert paths(expand_inputs([str(tmp_path / "foo.detect.jpg")], out_dir=tmp_path)[0]) == [str(tmp_path / "foo.detect.jpg")]
    # globs and stdin list them as a directory does
    assert paths(expand_inputs([str(tmp_path / "foo*.jpg")], out_dir=tmp_path)[0]) == [str(tmp_path / "foo.jpg")]
    stdin = io.StringIO(f"{tmp_path / 'foo.detect.jpg'}\n{tmp_path / 'foo.jpg'}\n")
    assert paths(expand_inputs(["-"], stdin=stdin, out_dir=tmp_path)[0]) == [str(tmp_path / "foo.jpg")]


def test_a_look_alike_cvtool_did_not_write_is_an_input(tmp_path):
    from cvtool.io.inputs import expand_inputs

    (tmp_path / "mine.detect.jpg").write_bytes(b"x")  # the user's own file, named like an output
    _as_output(tmp_path / "ours.detect.jpg")
    _as_output(tmp_path / "ours2.detect.jpg")
    (tmp_path / "ours2.detect.jpg").write_bytes(b"changed by hand")  # edited since: the user's now
    assert paths(expand_inputs([str(tmp_path)], out_dir=tmp_path)[0]) == [
        str(tmp_path / "mine.detect.jpg"), str(tmp_path / "ours2.detect.jpg")]


def test_a_folder_of_only_previous_outputs_says_so(tmp_path):
    _as_output(tmp_path / "a.detect.jpg")
    item = list(iter_inputs([str(tmp_path)], out_dir=tmp_path))[0]
    assert item.error == "no image files in directory (1 previous cvtool output(s) in --out are not inputs)"
    glob_item = list(iter_inputs([str(tmp_path / "*.jpg")], out_dir=tmp_path))[0]
    assert glob_item.error == "only previous cvtool outputs in --out match this pattern (1); they are not inputs"


def test_expanded_inputs_are_protected_from_every_write(tmp_path):
    import pytest

    from cvtool.errors import InputError
    from cvtool.io.atomic import atomic_write_bytes
    from cvtool.io.inputs import expand_inputs

    (tmp_path / "a.jpg").write_bytes(b"input")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "a.jpg")
    items, _ = expand_inputs([str(tmp_path / "a.jpg")])
    list(items)
    for target in (tmp_path / "a.jpg", tmp_path / "link.jpg", tmp_path / "." / "a.jpg"):
        with pytest.raises(InputError, match="would overwrite an input of this batch"):
            atomic_write_bytes(target, b"output")
    assert (tmp_path / "a.jpg").read_bytes() == b"input"
    expand_inputs([str(tmp_path / "link.jpg")], also_protect=[tmp_path / "style.jpg"])  # a new batch
    with pytest.raises(InputError, match="would overwrite an input of this batch"):
        atomic_write_bytes(tmp_path / "style.jpg", b"output")
    atomic_write_bytes(tmp_path / "b.jpg", b"output")


def test_fifos_sockets_and_devices_are_error_items_never_opened(tmp_path):
    import os
    import socket

    import pytest

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(tmp_path / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.png"))
    (tmp_path / "ok.jpg").write_bytes(b"x")
    items = list(iter_inputs([str(tmp_path), "/dev/null"]))
    sock.close()
    assert [(i.path, i.error) for i in items] == [
        (str(tmp_path / "ok.jpg"), None),
        (str(tmp_path / "pipe.jpg"), "not a regular file (a FIFO)"),
        (str(tmp_path / "sock.png"), "not a regular file (a socket)"),
        ("/dev/null", "not a regular file (a character device)"),
    ]


def test_reading_a_fifo_directly_fails_at_once(tmp_path):
    """The guard in the readers themselves (a library caller hands read_image or open_video a FIFO)."""
    import os
    import threading

    import pytest

    from cvtool.errors import InputError
    from cvtool.io.image import read_image
    from cvtool.io.video import open_video

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    errors = []

    def read_both():
        for reader in (read_image, open_video):
            try:
                reader(fifo)
            except InputError as exc:
                errors.append(str(exc))

    worker = threading.Thread(target=read_both, daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # blocked in open(): give it a writer so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    assert errors == [f"{fifo}: not a regular file (a FIFO)"] * 2
