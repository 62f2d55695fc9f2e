"""What the server works out once and reuses across requests (upload-pack's command and environment, the parts of
a remembered answer's key that come from them, the config files' content) is what it would work out afresh: a
change in ``os.environ`` or in a config file is seen by the very next request."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from repocache.gitops.run import GitOptions, find_git, git_environment
from repocache.gitops.upload_pack import upload_pack_command
from repocache.serve import Refused, Upstreams
from repocache.serve import answers as answers_module
from repocache.serve.answers import Answers
from tests.helpers import git


@pytest.fixture
def git_binary() -> str:
    binary = find_git()
    assert binary is not None
    return binary


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A bare repository (the mirror whose config git reads)."""
    path = tmp_path / "mirror.git"
    git("init", "--bare", "-q", str(path), cwd=tmp_path)
    return path


def test_upload_pack_command_follows_changes_of_os_environ(
    mirror: Path, git_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = GitOptions(git=git_binary, allow_local=False)
    monkeypatch.setenv("HOME", str(tmp_path / "first"))
    argv, env = upload_pack_command(options, git_binary, mirror, advertise=True, protocol="version=2")
    assert argv == [git_binary, "upload-pack", "--stateless-rpc", "--advertise-refs", str(mirror)]
    assert env["HOME"] == str(tmp_path / "first") and env["GIT_PROTOCOL"] == "version=2"
    base = git_environment(options)
    assert {name: value for name, value in env.items() if name in base and name != "GIT_CONFIG_COUNT"} == {
        name: value for name, value in base.items() if name != "GIT_CONFIG_COUNT"
    }
    env["HOME"] = "changed by a caller"
    argv.append("changed by a caller")
    again, same = upload_pack_command(options, git_binary, mirror, advertise=True, protocol="version=2")
    assert again == argv[:-1] and same["HOME"] == str(tmp_path / "first")

    monkeypatch.setenv("HOME", str(tmp_path / "second"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "global"))
    _, changed = upload_pack_command(options, git_binary, mirror, advertise=True, protocol="version=2")
    assert changed["HOME"] == str(tmp_path / "second")
    assert "GIT_CONFIG_GLOBAL" not in changed  # git_environment drops it, as it did before the change
    _, v0 = upload_pack_command(options, git_binary, mirror, advertise=False, protocol="")
    assert "GIT_PROTOCOL" not in v0 and v0["HOME"] == str(tmp_path / "second")


def key_of(answers: Answers, mirror: Path, git_binary: str, env: dict[str, str]) -> str | None:
    argv = [git_binary, "upload-pack", "--stateless-rpc", "--advertise-refs", str(mirror)]
    return answers.key(argv, env, mirror, tips=None)


def test_a_config_file_rewritten_within_the_same_size_and_mtime_changes_the_key(
    mirror: Path, git_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when the server trusts a file's unchanged ``stat`` at once (no settling time), a rewrite that keeps
    its size and its mtime changes its ctime: the key changes, and is the key a fresh server computes."""
    monkeypatch.setattr(answers_module, "_SETTLED_NS", 0)
    glob = tmp_path / "global"
    glob.write_text("[lsrefs]\n\tunborn = ignore\n")
    env = {"GIT_CONFIG_GLOBAL": str(glob), "GIT_CONFIG_NOSYSTEM": "1"}
    answers = Answers(git_binary)
    before = key_of(answers, mirror, git_binary, env)
    assert before is not None and key_of(answers, mirror, git_binary, env) == before
    mtime = glob.stat().st_mtime_ns
    time.sleep(0.05)  # past a tick of the filesystem's clock, so the ctime moves
    with open(glob, "r+b") as file:  # the same inode, the same size
        file.write(b"[lsrefs]\n\tunborn = advert")
    os.utime(glob, ns=(mtime, mtime))
    after = key_of(answers, mirror, git_binary, env)
    assert after is not None and after != before
    assert after == key_of(Answers(git_binary), mirror, git_binary, env)
    glob.write_text("[include]\n\tpath = other\n")
    assert key_of(answers, mirror, git_binary, env) is None  # names another file: nothing is remembered
    glob.unlink()
    assert key_of(answers, mirror, git_binary, env) == key_of(Answers(git_binary), mirror, git_binary, env)


def test_config_files_are_read_again_only_when_changed_or_changed_just_now(
    mirror: Path, git_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real = answers_module._read

    def counted(path: str) -> bytes:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(answers_module, "_read", counted)
    glob = tmp_path / "global"
    glob.write_text("[core]\n\tbigFileThreshold = 1m\n")
    env = {"GIT_CONFIG_GLOBAL": str(glob), "GIT_CONFIG_NOSYSTEM": "1"}
    answers = Answers(git_binary)
    first = key_of(answers, mirror, git_binary, env)
    assert sorted(reads) == sorted([str(glob), str(mirror / "config")])
    reads.clear()
    assert key_of(answers, mirror, git_binary, env) == first
    assert sorted(reads) == sorted([str(glob), str(mirror / "config")])  # written just now: read every time

    monkeypatch.setattr(answers_module, "_SETTLED_NS", 0)  # as if both were written long ago
    key_of(answers, mirror, git_binary, env)
    reads.clear()
    assert key_of(answers, mirror, git_binary, env) == first
    assert reads == []
    time.sleep(0.05)
    glob.write_text("[core]\n\tbigFileThreshold = 2m\n")
    assert key_of(answers, mirror, git_binary, env) != first
    assert reads == [str(glob)]


def test_a_route_kept_is_the_route_made_and_a_refused_path_is_refused_every_time() -> None:
    upstreams = Upstreams({"up.test": "https://up.test/"})
    path = b"/up.test/org/repo.git/info/refs"
    first = upstreams.route(path)
    assert upstreams.route(path) == first == Upstreams({"up.test": "https://up.test/"}).route(path)
    assert first.upstream == "https://up.test/org/repo.git" and first.service == "info/refs"
    for _ in range(2):
        with pytest.raises(Refused) as refused:
            upstreams.route(b"/up.test/org/../repo.git/info/refs")
        assert refused.value.status == 400
