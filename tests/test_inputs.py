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
