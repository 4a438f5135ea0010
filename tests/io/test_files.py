import errno
import hashlib

from codelora.io.files import describe_os_error, sha256_file, write_json_atomic, write_text_atomic


def test_atomic_writes_leave_only_the_file(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": [1, "é"]})
    write_text_atomic(tmp_path / "b.md", "# b\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.md"]
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == '{\n  "x": [\n    1,\n    "é"\n  ]\n}\n'


def test_sha256_of_a_file_larger_than_one_block(tmp_path):
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_os_errors_say_disk_full():
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device (disk full)"
    assert describe_os_error(OSError(errno.EACCES, "Permission denied")) == "Permission denied"
