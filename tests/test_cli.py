"""The ``repocache`` command, run for real in subprocesses against real local upstream repositories.

Upstreams are built with the git CLI in ``tmp_path``; every run gets its own ``HOME`` and ``REPOCACHE_DIR`` and
ignores the user's and the system's git configuration.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from repocache.cli import exit_code_for, main
from repocache.errors import (
    BudgetError,
    CloneError,
    ColdStoreError,
    ConfigError,
    FetchError,
    GitError,
    InvalidURLError,
    LockTimeoutError,
    ReadOnlyRootError,
    RepoCacheError,
    UnsafeFileError,
)
from tests.helpers import git, refs

Run = Callable[..., "subprocess.CompletedProcess[str]"]
MakeUpstream = Callable[..., Path]

_IDENTITY = {
    "GIT_AUTHOR_NAME": "Repocache Test",
    "GIT_AUTHOR_EMAIL": "test@repocache.invalid",
    "GIT_COMMITTER_NAME": "Repocache Test",
    "GIT_COMMITTER_EMAIL": "test@repocache.invalid",
}


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of every command: an isolated home and cache, no user or system git configuration."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("REPOCACHE_", "GIT_"))}
    home = tmp_path / "home"
    home.mkdir()
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        REPOCACHE_DIR=str(tmp_path / "cache"),
        GIT_CONFIG_GLOBAL=str(tmp_path / "git-global-config"),  # not /dev/null, which root could overwrite
        GIT_CONFIG_NOSYSTEM="1",
        PYTHONUNBUFFERED="1",
        **_IDENTITY,
    )
    return env


@pytest.fixture
def run(cli_env: dict[str, str], tmp_path: Path) -> Run:
    """Run ``python -m repocache ARGS...``; ``env`` adds variables, ``check`` asserts the exit code."""

    def run_cli(
        *args: str, env: dict[str, str] | None = None, check: int | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "repocache", *args],
            env={**cli_env, **(env or {})},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check is not None:
            assert result.returncode == check, (result.returncode, result.stdout, result.stderr)
        return result

    return run_cli


@pytest.fixture
def make_upstream(tmp_path: Path, cli_env: dict[str, str]) -> MakeUpstream:
    """Build a bare upstream repository with a few commits on ``main``, a branch ``feature`` and a tag ``v1``."""

    def make(name: str = "upstream", *, commits: int = 2) -> Path:
        bare = tmp_path / "upstreams" / f"{name}.git"
        work = tmp_path / "upstreams" / f"{name}-work"
        git("init", "-q", "--bare", "-b", "main", str(bare), env=cli_env)
        git("init", "-q", "-b", "main", str(work), env=cli_env)
        for number in range(commits):
            (work / f"file{number}.txt").write_text(f"{name} {number}\n" * 50)
            git("add", "-A", env=cli_env, cwd=work)
            git("commit", "-q", "-m", f"commit {number}", env=cli_env, cwd=work)
        git("tag", "v1", env=cli_env, cwd=work)
        git("branch", "feature", "HEAD~1" if commits > 1 else "HEAD", env=cli_env, cwd=work)
        git("push", "-q", str(bare), "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*", env=cli_env, cwd=work)
        shutil.rmtree(work)
        return bare

    return make


@pytest.fixture
def upstream(make_upstream: MakeUpstream) -> Path:
    """One upstream repository."""
    return make_upstream()


def add_commit(bare: Path, env: dict[str, str], tmp_path: Path, *, size: int = 0) -> None:
    """Push one more commit (with ``size`` random bytes) to ``main`` of the bare repository."""
    work = tmp_path / "add-commit"
    git("clone", "-q", str(bare), str(work), env=env)
    (work / "more.bin").write_bytes(os.urandom(size) if size else b"more\n")
    git("add", "-A", env=env, cwd=work)
    git("commit", "-q", "-m", "more", env=env, cwd=work)
    git("push", "-q", "origin", "main", env=env, cwd=work)
    shutil.rmtree(work)


def ls_json(run: Run, *args: str) -> list[dict[str, Any]]:
    """The parsed output of ``repocache ls --json``."""
    result = run(*args, "ls", "--json", check=0)
    entries = json.loads(result.stdout)
    assert isinstance(entries, list)
    return entries


def stats_json(run: Run, *args: str) -> dict[str, Any]:
    """The parsed output of ``repocache stats --json``."""
    stats = json.loads(run(*args, "stats", "--json", check=0).stdout)
    assert isinstance(stats, dict)
    return stats


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    """stderr is exactly one ``repocache: error:`` line containing every fragment, without a traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("repocache: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, stderr)
    assert "Traceback" not in stderr


# -- help and usage ------------------------------------------------------------------------------------------------


def test_help_lists_every_command_and_the_exit_codes(run: Run) -> None:
    result = run("--help", check=0)
    for command in ("get", "ls", "evict", "enforce", "warm", "stats", "verify"):
        assert f"    {command} " in result.stdout, command
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "6 ", "130 "):
        assert f"\n  {code}" in result.stdout, code
    assert "REPOCACHE_DIR" in result.stdout and "REPOCACHE_MAX_BYTES" in result.stdout
    assert "--version" in result.stdout
    sub = run("verify", "--help", check=0)
    assert "--repair" in sub.stdout and "repocache --help" in sub.stdout


@pytest.mark.parametrize(
    ("command", "own"),
    [
        (["get"], ["URL", "--json"]),
        (["verify"], ["--repair", "--json"]),
        (["cold", "ls"], ["--json"]),
        (["cold", "prune"], ["--older-than", "--keep-bytes"]),
    ],
)
def test_command_help_shows_its_own_options_and_points_to_the_global_ones(
    run: Run, command: list[str], own: list[str]
) -> None:
    from repocache.cli.commands import find

    text = run(*command, "--help", check=0).stdout
    assert len(text.splitlines()) <= 20, text  # was 54 lines, 35 of them the global options
    for option in own:
        assert option in text, (option, text)
    assert find(command).summary in text  # the description, also for subcommands (cold ls, cold prune)
    assert "--max-bytes" not in text and "--cold-publish" not in text  # the globals are not repeated
    assert "repocache --help" in text
    top = run("--help", check=0).stdout
    assert "--max-bytes" in top and "--cold-publish" in top


def test_version_and_missing_command(run: Run) -> None:
    from repocache import __version__

    assert run("--version", check=0).stdout.strip() == f"repocache {__version__}"
    missing = run(check=2)
    assert "a command is required" in missing.stderr
    unknown = run("frobnicate", check=2)
    assert "invalid choice" in unknown.stderr


def test_main_returns_exit_codes_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "repocache" in capsys.readouterr().out
    assert main(["ls", "--no-such-option"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidURLError("x", "bad"), 2),
        (ConfigError("bad"), 2),
        (GitError("u", "d"), 3),
        (CloneError("u", "d"), 3),
        (FetchError("u", "d"), 3),
        (BudgetError("u", 2, 1), 4),
        (LockTimeoutError("u", 1.0, "clone"), 5),
        (ColdStoreError("down"), 6),
        (RepoCacheError("other"), 6),
        (OSError("disk"), 6),
        (RuntimeError("bug"), 6),
        (KeyboardInterrupt(), 130),
        (BrokenPipeError(), 141),
    ],
)
def test_every_error_maps_to_its_documented_exit_code(error: BaseException, code: int) -> None:
    assert exit_code_for(error) == code


def test_every_exception_class_of_the_library_has_a_mapping() -> None:
    import repocache.errors

    generic = {RepoCacheError, ColdStoreError, ReadOnlyRootError, UnsafeFileError}  # "anything else" (6)
    for name in repocache.errors.__all__:
        cls = getattr(repocache.errors, name)
        instance = cls.__new__(cls)
        assert (exit_code_for(instance) == 6) == (cls in generic), name


# -- get -------------------------------------------------------------------------------------------------------------


def test_get_prints_the_path_of_a_bare_mirror_with_upstream_refs(
    run: Run, upstream: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    result = run("get", str(upstream), check=0)
    assert result.stdout.count("\n") == 1, result.stdout
    path = Path(result.stdout.strip())
    assert path.is_dir()
    assert path.parent == tmp_path / "cache" / "repos"
    assert git("rev-parse", "--is-bare-repository", env=cli_env, cwd=path).strip() == "true"
    mirrored = refs(path, cli_env)
    assert mirrored == refs(upstream, cli_env)
    assert {"refs/heads/main", "refs/heads/feature", "refs/tags/v1"} <= set(mirrored)
    assert result.stderr == ""


def test_get_with_a_filter_makes_a_partial_mirror_and_none_a_full_one(
    run: Run, upstream: Path, cli_env: dict[str, str]
) -> None:
    git("config", "uploadpack.allowFilter", "true", env=cli_env, cwd=upstream)
    partial = Path(run("get", "--filter", "blob:none", str(upstream), check=0).stdout.strip())
    assert partial.name.endswith("-blobless")
    assert git("config", "remote.origin.partialclonefilter", env=cli_env, cwd=partial).strip() == "blob:none"
    assert refs(partial, cli_env) == refs(upstream, cli_env)
    full = Path(run("get", "--filter", "none", str(upstream), check=0).stdout.strip())
    assert full != partial and not full.name.endswith(("-blobless", "-treeless"))
    assert list(full.glob("objects/pack/*.promisor")) == []


def test_get_with_a_filter_that_is_not_accepted_names_it_and_what_is(run: Run, upstream: Path) -> None:
    result = run("get", "--filter", "blob:limit=1k", str(upstream), check=2)
    assert "'blob:limit=1k' is not accepted; expected blob:none, tree:0 or none" in result.stderr


def test_get_fetches_new_upstream_commits_on_a_hit(
    run: Run, upstream: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = Path(run("get", str(upstream), check=0).stdout.strip())
    add_commit(upstream, cli_env, tmp_path)
    assert Path(run("get", f"file://{upstream}", check=0).stdout.strip()) == path
    assert refs(path, cli_env) == refs(upstream, cli_env)


def test_get_serves_a_stale_copy_with_one_warning_when_upstream_is_gone(run: Run, make_upstream: MakeUpstream) -> None:
    upstream = make_upstream("doomed")
    path = run("get", str(upstream), check=0).stdout.strip()
    shutil.rmtree(upstream)
    result = run("get", str(upstream), check=0)
    assert result.stdout.strip() == path
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"repocache: warning: serving a stale copy of file://{upstream}")
    assert run("-q", "get", str(upstream), check=0).stderr == ""
    assert stats_json(run)["fetch_errors"] == 2


def test_very_verbose_logs_a_line_for_every_hit(run: Run, upstream: Path) -> None:
    url = f"file://{upstream}"
    run("get", str(upstream), check=0)
    debug = run("-vv", "get", str(upstream), check=0).stderr.splitlines()
    assert f"repocache: debug: hit {url} (fetched, " in "\n".join(debug), debug
    cached = run("-vv", "--fetch-ttl", "3600", "get", str(upstream), check=0).stderr
    assert f"repocache: debug: hit {url} (not fetched, " in cached, cached
    assert "hit" not in run("-v", "get", str(upstream), check=0).stderr


def test_get_json_prints_the_entry(run: Run, upstream: Path) -> None:
    entry = json.loads(run("get", "--json", str(upstream), check=0).stdout)
    assert json.loads(run("get", "--print-entry", str(upstream), check=0).stdout)["key"] == entry["key"]
    assert entry["url"] == f"file://{upstream}"
    assert Path(entry["path"]).is_dir()
    assert entry["size_bytes"] > 0
    assert entry["pinned"] is False and entry["in_cold_store"] is False
    assert entry["last_fetched"] is not None and entry["last_used"] >= entry["last_fetched"]


@pytest.mark.parametrize("spelling", ["no-such-repo.git", "not a url"])
def test_get_of_a_local_path_that_does_not_exist_is_invalid_input(run: Run, tmp_path: Path, spelling: str) -> None:
    result = run("get", spelling, check=2)
    assert result.stdout == ""
    assert_one_error_line(result.stderr, "invalid repository URL", str(tmp_path / spelling), "does not exist")
    assert ls_json(run) == []
    assert list((tmp_path / "cache" / "staging").iterdir()) == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [("ext::sh -c x", "transport helpers"), ("-uoops", "may not start with '-'"), ("ftp://host/a/b", "scheme")],
)
def test_invalid_url_exits_2_with_a_clear_message(run: Run, url: str, reason: str) -> None:
    result = run("get", "--", url, check=2)
    assert result.stdout == ""
    assert_one_error_line(result.stderr, "invalid repository URL", reason)


def test_url_that_looks_like_an_option_never_reaches_git(run: Run, tmp_path: Path) -> None:
    injected = run("get", f"--upload-pack=touch {tmp_path}/pwned", check=2)  # argparse passes it on: it has a space
    assert_one_error_line(injected.stderr, "may not start with '-'")
    option = run("get", "-oops", check=2)  # argparse reads this one as an unknown option
    assert "usage: repocache get" in option.stderr
    assert not (tmp_path / "pwned").exists()
    assert ls_json(run) == []


def test_invalid_settings_exit_2_naming_the_setting(run: Run, tmp_path: Path) -> None:
    bad_option = run("--max-bytes", "lots", "ls", check=2)
    assert "--max-bytes" in bad_option.stderr and "Traceback" not in bad_option.stderr
    bad_env = run("ls", env={"REPOCACHE_MAX_BYTES": "lots"}, check=2)
    assert_one_error_line(bad_env.stderr, "REPOCACHE_MAX_BYTES", "lots")
    assert "--fetch-ttl" in run("--fetch-ttl", "-5", "ls", check=2).stderr
    missing_pins = run("--pins", str(tmp_path / "nope.yaml"), "ls", check=2)
    assert_one_error_line(missing_pins.stderr, "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("never_evict:\n  - https://h/a\n  bad: [\n")
    assert_one_error_line(run("--pins", str(broken), "ls", check=2).stderr, str(broken), "line 3, column 3")


def test_fetch_ttl_comes_from_the_option_else_the_environment_and_accepts_auto(
    run: Run, upstream: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = Path(run("get", str(upstream), check=0).stdout.strip())
    add_commit(upstream, cli_env, tmp_path)
    hour = {"REPOCACHE_FETCH_TTL": "3600"}
    run("get", str(upstream), env=hour, check=0)
    assert refs(path, cli_env) != refs(upstream, cli_env)  # fetched a moment ago: upstream not contacted
    assert stats_json(run)["fetches"] == 0
    run("--fetch-ttl", "0", "get", str(upstream), env=hour, check=0)  # the option wins over the environment
    assert refs(path, cli_env) == refs(upstream, cli_env)
    run("--fetch-ttl", "auto", "get", str(upstream), check=0)
    run("get", str(upstream), env={"REPOCACHE_FETCH_TTL": "auto"}, check=0)
    assert "--fetch-ttl" in run("--fetch-ttl", "soon", "ls", check=2).stderr
    bad_env = run("ls", env={"REPOCACHE_FETCH_TTL": "soon"}, check=2)
    assert_one_error_line(bad_env.stderr, "REPOCACHE_FETCH_TTL", "soon", "auto")


def test_max_age_overrides_the_ttl_for_one_get(
    run: Run, make_upstream: MakeUpstream, cli_env: dict[str, str], tmp_path: Path
) -> None:
    upstream = make_upstream("aging")
    path = Path(run("get", str(upstream), check=0).stdout.strip())
    add_commit(upstream, cli_env, tmp_path)
    run("--fetch-ttl", "3600", "get", "--max-age", "0", str(upstream), check=0)
    assert refs(path, cli_env) == refs(upstream, cli_env)
    shutil.rmtree(upstream)
    served = run("get", str(upstream), "--max-age", "any", check=0)  # any age: upstream is not contacted
    assert served.stdout.strip() == str(path) and served.stderr == ""
    assert "--max-age" in run("get", str(upstream), "--max-age", "old", check=2).stderr


def test_on_fetch_error_raise_exits_3_instead_of_serving_a_stale_copy(run: Run, make_upstream: MakeUpstream) -> None:
    upstream = make_upstream("gone")
    run("get", str(upstream), check=0)
    shutil.rmtree(upstream)
    assert_one_error_line(run("--on-fetch-error", "raise", "get", str(upstream), check=3).stderr, str(upstream))
    run("get", str(upstream), env={"REPOCACHE_ON_FETCH_ERROR": "raise"}, check=3)
    run("get", str(upstream), check=0)  # warn, the default: the stale copy is served
    assert "--on-fetch-error" in run("--on-fetch-error", "ignore", "ls", check=2).stderr


@pytest.mark.timeout(60)
def test_lock_timeout_bounds_the_wait_for_another_workers_fetch(run: Run, upstream: Path, tmp_path: Path) -> None:
    key = json.loads(run("get", "--json", str(upstream), check=0).stdout)["key"]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True);"
            " sys.stdin.read()",
            str(tmp_path / "cache" / "locks" / f"{key}.fetch"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        timed_out = run("--lock-timeout", "0.5", "get", str(upstream), check=5, timeout=30)
        assert_one_error_line(timed_out.stderr, str(upstream))
        run("get", str(upstream), env={"REPOCACHE_LOCK_TIMEOUT": "0.5"}, check=5, timeout=30)
    finally:
        holder.communicate("\n", timeout=30)
    run("--lock-timeout", "0.5", "get", str(upstream), check=0)
    assert "--lock-timeout" in run("--lock-timeout", "-1", "ls", check=2).stderr


def test_verbose_error_shows_the_traceback(run: Run, tmp_path: Path) -> None:
    (tmp_path / "not-a-repository").mkdir()
    result = run("-v", "get", str(tmp_path / "not-a-repository"), check=3)
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("repocache: error: clone of")


# -- budget ---------------------------------------------------------------------------------------------------------


def test_budget_error_exits_4_before_downloading_a_repository_of_known_size(run: Run, upstream: Path) -> None:
    run("get", str(upstream), check=0)
    size = ls_json(run)[0]["size_bytes"]
    run("evict", str(upstream), check=0)
    for args, env in (((("--max-bytes", "1")), None), ((), {"REPOCACHE_MAX_BYTES": "1"})):
        result = run(*args, "get", str(upstream), env=env, check=4)
        assert result.stdout == ""
        assert_one_error_line(result.stderr, f"needs {size} bytes")
    stats = stats_json(run)
    assert stats["clones"] == 1  # nothing was downloaded for the refused requests
    assert stats["entries"] == 0


def test_get_exits_4_when_the_new_clone_is_larger_than_the_budget(run: Run, upstream: Path) -> None:
    result = run("--max-bytes", "1", "get", str(upstream), check=4)
    assert result.stdout == ""  # never a path that no longer exists
    assert_one_error_line(result.stderr, f"file://{upstream}")
    assert ls_json(run) == []


def test_enforce_evicts_least_recently_used_and_prints_their_urls(run: Run, make_upstream: MakeUpstream) -> None:
    first, second = make_upstream("first"), make_upstream("second")
    run("get", str(first), check=0)
    run("get", str(second), check=0)
    sizes = {entry["url"]: entry["size_bytes"] for entry in ls_json(run)}
    budget = sizes[f"file://{second}"]
    result = run("--max-bytes", str(budget), "enforce", check=0)
    assert result.stdout.splitlines() == [f"file://{first}"]
    assert [entry["url"] for entry in ls_json(run)] == [f"file://{second}"]
    assert run("--max-bytes", str(budget), "enforce", check=0).stdout == ""


def test_enforce_without_a_budget_says_so(run: Run, upstream: Path) -> None:
    run("get", str(upstream), check=0)
    result = run("enforce", check=0)
    assert result.stdout == ""
    assert "no budget is set" in result.stderr
    assert len(ls_json(run)) == 1


# -- ls, stats, evict ----------------------------------------------------------------------------------------------


def test_ls_json_lists_every_entry_field(run: Run, upstream: Path, tmp_path: Path) -> None:
    path = run("get", str(upstream), check=0).stdout.strip()
    entries = ls_json(run)
    assert len(entries) == 1
    entry = entries[0]
    assert set(entry) == {
        "url",
        "key",
        "path",
        "size_bytes",
        "last_used",
        "last_fetched",
        "pinned",
        "in_cold_store",
    }
    assert entry["url"] == f"file://{upstream}"
    assert entry["path"] == path
    assert entry["key"] == Path(path).name
    assert entry["size_bytes"] > 0


def test_ls_table_shows_url_size_recency_pinned_and_cold(run: Run, make_upstream: MakeUpstream, tmp_path: Path) -> None:
    first, second = make_upstream("first"), make_upstream("second")
    pins = tmp_path / "pins.yaml"
    pins.write_text(f"never_evict:\n  - {first}\n")
    run("get", str(first), check=0)
    run("get", str(second), check=0)
    lines = run("--pins", str(pins), "ls", check=0).stdout.splitlines()
    assert lines[0].split() == ["URL", "SIZE", "LAST", "USED", "PINNED", "COLD"]
    assert lines[1].startswith(f"file://{second} ")  # most recently used first
    assert lines[1].split()[-2:] == ["no", "no"]
    assert lines[2].startswith(f"file://{first} ")
    assert lines[2].split()[-2:] == ["yes", "no"]
    assert "KiB" in lines[1] and ("ago" in lines[1] or "just now" in lines[1])


def test_cold_store_option_offloads_and_restores(run: Run, upstream: Path, tmp_path: Path) -> None:
    cold = f"file://{tmp_path / 'cold'}"
    run("--cold-store", cold, "get", str(upstream), check=0)
    run("--cold-store", cold, "evict", str(upstream), check=0)
    assert list((tmp_path / "cold").rglob("*.json"))
    run("get", str(upstream), env={"REPOCACHE_COLD_STORE": cold}, check=0)
    (entry,) = ls_json(run)
    assert entry["in_cold_store"] is True
    assert run("stats", "--json", check=0).stdout.count('"restores": 1') == 1
    lines = run("ls", check=0).stdout.splitlines()
    assert lines[1].split()[-1] == "yes"


def test_ls_of_an_empty_cache(run: Run) -> None:
    assert ls_json(run) == []
    result = run("ls", check=0)
    assert result.stdout == ""
    assert "no repositories cached" in result.stderr
    assert run("-q", "ls", check=0).stderr == ""


def test_stats_json_counts_clones_hits_fetches_and_bytes(run: Run, upstream: Path) -> None:
    run("get", str(upstream), check=0)
    run("get", str(upstream), check=0)
    run("--fetch-ttl", "3600", "get", str(upstream), check=0)  # fresh enough: a hit without a fetch
    stats = stats_json(run, "--max-bytes", "20MiB")
    size = ls_json(run)[0]["size_bytes"]
    assert stats == {
        "hits": 2,
        "misses": 1,
        "clones": 1,
        "fetches": 1,
        "restores": 0,
        "evictions": 0,
        "fetch_errors": 0,
        "clone_errors": 0,
        "restore_errors": 0,
        "auth_errors": 0,
        "bytes_used": size,
        "bytes_limit": 20 * 1024**2,
        "entries": 1,
        "root": stats["root"],
    }
    human = run("stats", check=0).stdout
    assert "clones" in human and "unlimited" in human and f"({size} bytes)" in human


def test_evict_exits_0_then_1_when_nothing_is_left(run: Run, upstream: Path) -> None:
    path = Path(run("get", str(upstream), check=0).stdout.strip())
    first = run("evict", str(upstream), check=0)
    assert first.stdout.strip() == f"file://{upstream}"
    assert not path.exists()
    second = run("evict", str(upstream), check=1)
    assert second.stdout == ""
    assert_one_error_line(second.stderr, "not evicted", "not in the cache")
    assert stats_json(run)["evictions"] == 1


def test_evict_refuses_a_pinned_repository_unless_forced(run: Run, upstream: Path, tmp_path: Path) -> None:
    pins = tmp_path / "pins.yaml"
    pins.write_text(f"never_evict:\n  - file://{upstream}\n")
    run("get", str(upstream), check=0)
    refused = run("evict", str(upstream), env={"REPOCACHE_PINS": str(pins)}, check=1)
    assert_one_error_line(refused.stderr, "pinned", "--force")
    assert len(ls_json(run)) == 1
    run("--pins", str(pins), "evict", "--force", str(upstream), check=0)
    assert ls_json(run) == []


def test_evict_refuses_a_repository_held_by_another_process(run: Run, upstream: Path, tmp_path: Path) -> None:
    run("get", str(upstream), check=0)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, repocache\n"
            "with repocache.RepoCache(sys.argv[1]) as cache, cache.checkout(sys.argv[2]):\n"
            "    print('held', flush=True)\n"
            "    sys.stdin.readline()\n",
            str(tmp_path / "cache"),
            str(upstream),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = run("evict", str(upstream), check=1)
        assert_one_error_line(refused.stderr, "in use")
    finally:
        holder.communicate("\n", timeout=30)
    run("evict", str(upstream), check=0)


def test_global_options_are_accepted_after_the_command(run: Run, upstream: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-cache"
    path = Path(run("get", str(upstream), "--root", str(other), check=0).stdout.strip())
    assert path.parent == other / "repos"
    assert ls_json(run) == []  # the default root ($REPOCACHE_DIR) was not used
    assert [entry["path"] for entry in ls_json(run, "--root", str(other))] == [str(path)]


def test_maintain_of_a_repository_not_cached_exits_1_as_stale_and_evict_do(run: Run, upstream: Path) -> None:
    url = f"file://{upstream}"
    for command in ("maintain", "stale", "evict"):
        refused = run(command, str(upstream), check=1)
        assert refused.stdout == "", command
        assert_one_error_line(refused.stderr, url, "not in the cache")
    assert json.loads(run("maintain", "--json", str(upstream), check=1).stdout) == []
    assert run("maintain", check=0).stdout == ""  # every cached repository: none is not a failure
    run("get", str(upstream), check=0)
    run("maintain", str(upstream), check=0)
    assert_one_error_line(run("maintain", "ftp://host/a", check=2).stderr, "invalid repository URL")


# -- verify ---------------------------------------------------------------------------------------------------------


def test_verify_reports_a_mirror_deleted_by_hand_and_repairs_it(run: Run, upstream: Path) -> None:
    path = Path(run("get", str(upstream), check=0).stdout.strip())
    assert run("verify", check=0).stdout == ""
    shutil.rmtree(path)
    found = run("verify", check=1)
    assert "missing" in found.stdout and path.name in found.stdout and "found" in found.stdout
    assert "--repair" in found.stderr
    repaired = run("verify", "--repair", "--json", check=0)
    problems = json.loads(repaired.stdout)
    assert [(p["kind"], p["key"], p["path"], p["repaired"]) for p in problems] == [
        ("missing", path.name, str(path), True)
    ]
    assert run("verify", "--json", check=0).stdout.strip() == "[]"
    assert ls_json(run) == []
    run("get", str(upstream), check=0)  # the repaired cache clones it again
    assert path.is_dir()


# -- warm ----------------------------------------------------------------------------------------------------------


def test_warm_clones_every_pinned_url_and_skips_globs(run: Run, make_upstream: MakeUpstream, tmp_path: Path) -> None:
    first, second = make_upstream("first"), make_upstream("second")
    pins = tmp_path / "pins.yaml"
    pins.write_text(f"never_evict:\n  - {first}\n  - file://{second}/\n  - https://example.com/org/*\n")
    result = run("warm", str(pins), check=0)
    assert sorted(line.split()[1] for line in result.stdout.splitlines()) == [f"file://{first}", f"file://{second}"]
    assert "skipping glob pattern 'https://example.com/org/*'" in result.stderr
    entries = ls_json(run, "--pins", str(pins))
    assert sorted(entry["url"] for entry in entries) == [f"file://{first}", f"file://{second}"]
    assert all(entry["pinned"] for entry in entries)
    again = run("warm", env={"REPOCACHE_PINS": str(pins)}, check=0)  # the cache's own pins; now hits
    assert len(again.stdout.splitlines()) == 2
    assert stats_json(run)["clones"] == 2


def test_warm_continues_after_a_failure_and_exits_with_its_code(run: Run, upstream: Path, tmp_path: Path) -> None:
    missing = tmp_path / "gone.git"
    pins = tmp_path / "pins.yaml"
    pins.write_text(f"never-evict-repos:\n  - {missing}\n  - {upstream}\n")
    result = run("warm", str(pins), check=3)
    assert result.stdout.splitlines() == [line for line in result.stdout.splitlines() if line.startswith("warmed")]
    assert f"file://{upstream}" in result.stdout
    assert f"repocache: error: clone of file://{missing} failed" in result.stderr
    assert "1 of 2 repositories were not warmed" in result.stderr
    assert [entry["url"] for entry in ls_json(run)] == [f"file://{upstream}"]


def test_warm_without_a_pin_file_is_a_usage_error(run: Run, tmp_path: Path) -> None:
    assert_one_error_line(run("warm", check=2).stderr, "pin file")
    broken = tmp_path / "broken.yaml"
    broken.write_text("something_else: []\n")
    assert_one_error_line(run("warm", str(broken), check=2).stderr, "no pin list found")


# -- progress and interrupts ---------------------------------------------------------------------------------------


def _run_on_terminal(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, bytes]:
    """Run the CLI with stderr on a wide pseudo-terminal; returns (exit code, stdout, what the terminal got)."""
    import fcntl
    import pty
    import struct
    import termios

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 1000, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "repocache", *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=terminal
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.stdout is not None
    stdout = process.stdout.read().decode()
    process.stdout.close()
    return process.wait(timeout=60), stdout, output


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_progress_bar_is_drawn_on_a_terminal_and_nowhere_else(
    run: Run, upstream: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = run("get", str(upstream), check=0).stdout.strip()
    add_commit(upstream, cli_env, tmp_path, size=200_000)
    code, stdout, terminal = _run_on_terminal(["get", str(upstream)], cli_env, tmp_path)
    assert code == 0
    assert stdout == path + "\n"  # results stay clean on stdout
    assert f"fetch file://{upstream}".encode() in terminal
    assert b"\r" in terminal and terminal.endswith(b"\r\x1b[K")  # one line, rewritten, erased at the end
    add_commit(upstream, cli_env, tmp_path, size=200_000)
    code, _stdout, quiet = _run_on_terminal(["-q", "get", str(upstream)], cli_env, tmp_path)
    assert code == 0 and quiet == b""
    add_commit(upstream, cli_env, tmp_path, size=200_000)
    piped = run("get", str(upstream), check=0)
    assert piped.stderr == ""


def test_progress_line_fits_the_terminal_and_is_erased_when_done() -> None:
    import io

    from repocache.cli import _ProgressBar
    from repocache.models import Progress

    stream = io.StringIO()  # no terminal size: the bar assumes 79 columns
    bar = _ProgressBar(stream)
    url = "https://example.com/" + "a" * 200
    bar(Progress(url, "clone", "receiving", 512, 1024, 3 * 1024**2))
    drawn = stream.getvalue()
    assert drawn.startswith("\rclone ...") and drawn.endswith("receiving 512/1024  50% 3.0 MiB\x1b[K")
    assert len(drawn) - len("\r\x1b[K") == 79
    bar(Progress("https://example.com/a", "clone", "resolving", 5, 10, 0))
    assert stream.getvalue().endswith("\rclone https://example.com/a resolving 5/10  50% [##########----------]\x1b[K")
    bar(Progress(url, "clone", "done", 0, 0, 0))
    assert stream.getvalue().endswith("\r\x1b[K")
    bar.clear()  # nothing drawn any more: nothing written
    assert stream.getvalue().endswith("[K\r\x1b[K")


@pytest.mark.parametrize(
    ("signum", "code", "message"),
    [(signal.SIGINT, 130, "repocache: interrupted"), (signal.SIGTERM, 143, "repocache: terminated (SIGTERM)")],
)
def test_an_interrupt_or_a_termination_stops_git_and_leaves_nothing(
    run: Run, cli_env: dict[str, str], tmp_path: Path, signum: int, code: int, message: str
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        server.settimeout(30)
        process = subprocess.Popen(
            [sys.executable, "-m", "repocache", "get", f"git://127.0.0.1:{port}/stuck/repo"],
            env=cli_env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            connection, _address = server.accept()  # git is waiting for an answer that never comes
            with connection:
                connection.settimeout(30)
                assert connection.recv(4096)  # git's request
                process.send_signal(signum)
                stdout, stderr = process.communicate(timeout=30)
                while connection.recv(4096):  # times out (failing the test) if git was left running
                    pass
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == code, stderr
    assert stdout == ""
    assert stderr.strip() == message
    assert ls_json(run) == []
    assert list((tmp_path / "cache" / "staging").iterdir()) == []


# -- publishing and the cold store ---------------------------------------------------------------------------------


def test_publish_uploads_for_another_host_and_cold_ls_lists_it(
    run: Run, make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    first, second = make_upstream("first"), make_upstream("second")
    cold = f"file://{tmp_path / 'cold'}"
    out = run("--cold-store", cold, "publish", str(first), str(second), check=0).stdout.splitlines()
    assert [line.split()[:2] for line in out] == [["published", f"file://{first}"], ["published", f"file://{second}"]]
    listed = json.loads(run("--cold-store", cold, "cold", "ls", "--json", check=0).stdout)
    assert {m["url"] for m in listed} == {f"file://{first}", f"file://{second}"}
    assert all(m["sha256"] and m["size_bytes"] > 0 and m["generation"] for m in listed)
    table = run("cold", "ls", env={"REPOCACHE_COLD_STORE": cold}, check=0).stdout.splitlines()
    assert table[0].split() == ["URL", "SIZE", "MIRROR", "CREATED", "REFS", "COMPRESSION"] and len(table) == 3
    other = {"REPOCACHE_DIR": str(tmp_path / "other-host"), "REPOCACHE_COLD_STORE": cold}
    run("get", str(first), env=other, check=0)
    assert json.loads(run("stats", "--json", env=other, check=0).stdout)["restores"] == 1


def test_ls_json_shows_the_cold_store_beside_the_entries(run: Run, make_upstream: MakeUpstream, tmp_path: Path) -> None:
    here, elsewhere = make_upstream("here"), make_upstream("elsewhere")
    cold = f"file://{tmp_path / 'cold'}"
    run("--cold-store", cold, "--root", str(tmp_path / "another-host"), "publish", str(elsewhere), check=0)
    run("--cold-store", cold, "get", str(here), check=0)
    entries = ls_json(run, "--cold-store", cold)
    assert [(e["url"], e["path"] is not None, e["cold"] is not None) for e in entries] == [
        (f"file://{here}", True, False),
        (f"file://{elsewhere}", False, True),
    ]
    assert entries[1]["cold"]["url"] == f"file://{elsewhere}" and entries[1]["size_bytes"] > 0
    assert set(entries[0]) == set(entries[1])
    assert "cold" not in ls_json(run)[0]  # without a cold store the entries are as before


def test_cold_prune_deletes_by_size_and_prints_the_urls(run: Run, make_upstream: MakeUpstream, tmp_path: Path) -> None:
    old, new = make_upstream("old"), make_upstream("new")
    cold = f"file://{tmp_path / 'cold'}"
    run("--cold-store", cold, "publish", str(old), check=0)
    run("--cold-store", cold, "publish", str(new), check=0)
    result = run("--cold-store", cold, "cold", "prune", "--keep-bytes", "1", check=0)
    assert result.stdout.splitlines() == [f"file://{old}", f"file://{new}"]
    assert "pruned 2 artifacts" in result.stderr
    assert json.loads(run("--cold-store", cold, "cold", "ls", "--json", check=0).stdout) == []


def test_cold_commands_without_a_cold_store_exit_2(run: Run, upstream: Path) -> None:
    assert_one_error_line(run("cold", "ls", check=2).stderr, "cold store", "--cold-store")
    assert_one_error_line(run("publish", str(upstream), check=2).stderr, "cold store")


def test_cold_publish_option_publishes_every_clone(run: Run, upstream: Path, tmp_path: Path) -> None:
    cold = f"file://{tmp_path / 'cold'}"
    run("--cold-store", cold, "--cold-publish", "clone", "get", str(upstream), check=0)
    assert len(json.loads(run("--cold-store", cold, "cold", "ls", "--json", check=0).stdout)) == 1


# -- the cold store's state, told straight -------------------------------------------------------------------------


def test_a_restored_repository_is_in_the_cold_store_beside_its_artifact(
    run: Run, upstream: Path, tmp_path: Path
) -> None:
    cold = f"file://{tmp_path / 'cold'}"
    run("--cold-store", cold, "--root", str(tmp_path / "another-host"), "publish", str(upstream), check=0)
    run("--cold-store", cold, "get", str(upstream), check=0)
    assert stats_json(run)["restores"] == 1
    (entry,) = ls_json(run, "--cold-store", cold)
    assert entry["cold"] is not None and entry["path"] is not None
    assert entry["in_cold_store"] is True, entry
    lines = run("--cold-store", cold, "ls", check=0).stdout.splitlines()
    assert lines[1].split()[-1] == "yes", lines


def test_ls_with_an_unreachable_cold_store_says_unknown_and_fails_as_ls_json_does(
    run: Run, upstream: Path, tmp_path: Path
) -> None:
    cold = tmp_path / "cold"
    run("--cold-store", str(cold), "publish", str(upstream), check=0)
    shutil.rmtree(cold)  # permissions do not stop root: a store under a file is one no one can list
    cold.mkdir()
    (cold / "sub").write_text("")
    store = f"file://{cold / 'sub' / 'store'}"
    table = run("--cold-store", store, "ls")
    as_json = run("--cold-store", store, "ls", "--json")
    assert table.returncode == as_json.returncode != 0, (table, as_json)
    lines = table.stdout.splitlines()
    assert lines[1].split()[-1] == "?", lines
    assert "cold store" in table.stderr and str(cold / "sub") in table.stderr, table.stderr
    assert "Traceback" not in table.stderr + as_json.stderr


def test_a_cold_store_directory_that_does_not_exist_is_named_not_an_empty_store(
    run: Run, upstream: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-store"
    for args in (("cold", "ls"), ("ls", "--json")):
        result = run("--cold-store", str(missing), *args)
        assert result.returncode != 0, (args, result.stdout)
        assert str(missing) in result.stderr and "does not exist" in result.stderr, result.stderr
    assert not missing.exists()


def test_an_unsupported_cold_store_scheme_is_a_usage_error_naming_it(run: Run) -> None:
    result = run("--cold-store", "ftp://x/y", "ls", timeout=30)
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr, "ftp://x/y", "s3://")
    assert "Name or service not known" not in result.stderr


# -- run: a command in a temporary worktree ------------------------------------------------------------------------

_SHOW_TREE = (
    "import os, sys; from pathlib import Path; "
    "print(os.environ['REPOCACHE_WORKTREE']); print(os.getcwd()); print(os.environ['REPOCACHE_COMMIT']); "
    "print(sorted(p.name for p in Path('.').iterdir())); sys.exit(int(sys.argv[1]))"
)


def _worktrees(tmp_path: Path) -> list[Path]:
    directory = tmp_path / "cache" / "worktrees"
    return sorted(directory.iterdir()) if directory.is_dir() else []


@pytest.mark.parametrize("code", [0, 3])
def test_run_runs_the_command_in_a_worktree_of_the_ref_and_passes_its_exit_code_through(
    run: Run, upstream: Path, cli_env: dict[str, str], tmp_path: Path, code: int
) -> None:
    result = run("run", str(upstream), "--", sys.executable, "-c", _SHOW_TREE, str(code), check=code)
    tree, cwd, commit, names = result.stdout.splitlines()
    assert Path(cwd).resolve() == Path(tree).resolve()
    assert commit == refs(upstream, cli_env)["refs/heads/main"]
    assert names == str([".git", "file0.txt", "file1.txt"])
    assert not Path(tree).exists() and _worktrees(tmp_path) == []
    feature = run("run", "--ref", "feature", str(upstream), "--", sys.executable, "-c", _SHOW_TREE, "0", check=0)
    assert feature.stdout.splitlines()[2] == refs(upstream, cli_env)["refs/heads/feature"]
    assert feature.stdout.splitlines()[3] == str([".git", "file0.txt"])
    assert _worktrees(tmp_path) == []


def test_run_hands_the_arguments_after_the_first_double_dash_over_verbatim(run: Run, upstream: Path) -> None:
    printed = run("run", str(upstream), "--", sys.executable, "-c", "import sys; print(sys.argv[1:])", "-x", "--", "y")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == str(["-x", "--", "y"])


def test_run_reports_a_killed_command_a_missing_command_and_a_missing_ref(
    run: Run, upstream: Path, tmp_path: Path
) -> None:
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    run("run", str(upstream), "--", sys.executable, "-c", kill, check=128 + signal.SIGKILL)
    missing = run("run", str(upstream), "--", str(tmp_path / "no-such-command"), check=127)
    assert_one_error_line(missing.stderr, "command not found", "no-such-command")
    assert_one_error_line(run("run", str(upstream), check=2).stderr, "run needs a command")
    no_ref = run("run", "--ref", "no-such-branch", str(upstream), "--", "true", check=2)
    assert_one_error_line(no_ref.stderr, "no-such-branch")
    assert _worktrees(tmp_path) == []


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_run_passes_a_signal_on_to_the_command_and_removes_the_worktree(
    upstream: Path, cli_env: dict[str, str], tmp_path: Path, signum: int, code: int
) -> None:
    wait = (
        "import os, signal, sys, time; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "print(os.getcwd(), flush=True); time.sleep(60)"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "repocache", "run", str(upstream), "--", sys.executable, "-c", wait],
        env=cli_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        tree = Path(process.stdout.readline().strip())  # the command is running in its worktree
        assert tree.is_dir()
        process.send_signal(signum)  # to repocache alone, as `kill` or `timeout` sends it
        _stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == code, stderr
    assert not tree.exists() and _worktrees(tmp_path) == []


@pytest.mark.timeout(90)
@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_run_does_not_repeat_a_ctrl_c_the_terminal_already_sent_to_the_command(
    upstream: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    import fcntl
    import pty
    import termios

    count = (
        "import os, signal, sys, time; seen = []; signal.signal(signal.SIGINT, lambda *_: seen.append(1)); "
        "print(os.getcwd(), flush=True); deadline = time.monotonic() + 30\n"
        "while not seen and time.monotonic() < deadline: time.sleep(0.05)\n"
        "time.sleep(1.5); print(len(seen), flush=True); sys.exit(7)"
    )
    controller, terminal = pty.openpty()

    def own_terminal() -> None:  # a session whose controlling terminal is the pty: Ctrl-C reaches its group
        os.setsid()
        fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        [sys.executable, "-m", "repocache", "run", str(upstream), "--", sys.executable, "-c", count],
        env=cli_env,
        cwd=tmp_path,
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=own_terminal,
    )
    os.close(terminal)
    try:
        assert process.stdout is not None
        tree = Path(process.stdout.readline().strip())
        assert tree.is_dir()
        os.write(controller, b"\x03")  # Ctrl-C typed on the terminal: SIGINT to repocache and the command
        stdout, stderr = process.communicate(timeout=30)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert stdout.strip() == "1", stderr  # the command saw one SIGINT, the terminal's
    assert process.returncode == 7, stderr
    assert not tree.exists() and _worktrees(tmp_path) == []
