"""Why an output folder cannot be written, said truthfully (the operating system's own
message can mislead: creating a file in /proc says "No such file or directory")."""
import os

import pytest

from mamol.core.errors import MamolInputError
from mamol.core.disk import ensure_writable_folder

pytestmark = pytest.mark.platform   # folders, permissions and renames of this platform


def reason(folder):
    with pytest.raises(MamolInputError) as raised:
        ensure_writable_folder(folder)
    return str(raised.value)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_existing_folder_whose_file_system_refuses_files():
    message = reason("/proc")
    assert "the folder exists, but its file system refuses new files there" in message
    assert "Choose a folder you have write access to" in message


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_missing_folder_that_cannot_be_created():
    message = reason("/proc/mamol-out/deeper")
    assert "the folder does not exist, and the file system of '/proc' refuses to create it" \
        in message


def test_a_file_in_the_way(tmp_path):
    (tmp_path / "a_file").write_text("x")
    assert "it is a file, not a folder" in reason(tmp_path / "a_file")
    assert f"'{tmp_path / 'a_file'}' is a file, not a folder" in reason(
        tmp_path / "a_file" / "out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_folder_without_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "the folder exists, but you have no permission to write in it" in reason(locked)
        assert "you have no permission to create it in" in reason(locked / "out")
    finally:
        locked.chmod(0o700)


def test_writable_folder_is_created_and_left_clean(tmp_path):
    assert ensure_writable_folder(tmp_path / "new" / "out") == tmp_path / "new" / "out"
    assert list((tmp_path / "new" / "out").iterdir()) == []
