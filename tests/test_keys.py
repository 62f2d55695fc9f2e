"""URL normalization: one key per repository, no key outside the root, no credentials kept."""

from __future__ import annotations

import re

import pytest

from repocache import InvalidURLError, normalize_url

SAME_REPOSITORY = [
    "https://github.com/a/b",
    "https://github.com/a/b.git",
    "https://github.com/a/b/",
    "https://github.com/a/b.git/",
    "https://GitHub.COM/a/b",
    "https://github.com:443/a/b",
    "https://user:token@github.com/a/b.git",
    "https://token@github.com/a/b",
    "https://github.com//a//b",
]


@pytest.mark.parametrize("url", SAME_REPOSITORY)
def test_spellings_of_one_https_repository_share_a_key(url: str) -> None:
    assert normalize_url(url).key == normalize_url("https://github.com/a/b").key
    assert normalize_url(url).url == "https://github.com/a/b"


@pytest.mark.parametrize("url", ["git@github.com:/a/b", "git@github.com:/a/b.git", "ssh://git@github.com/a/b"])
def test_scp_like_and_ssh_urls_of_one_absolute_path_share_a_key(url: str) -> None:
    parsed = normalize_url(url)
    assert parsed.url == "ssh://github.com/a/b"
    assert parsed.fetch_url.startswith("ssh://git@github.com/a/b")


@pytest.mark.parametrize("url", ["git@github.com:a/b", "git@github.com:~/a/b.git", "ssh://git@github.com/~/a/b"])
def test_home_relative_scp_like_urls_share_a_key_apart_from_the_absolute_path(url: str) -> None:
    parsed = normalize_url(url)
    assert parsed.url == "ssh://github.com/~/a/b"
    assert parsed.key != normalize_url("ssh://git@github.com/a/b").key


def test_credentials_are_kept_out_of_everything_written() -> None:
    parsed = normalize_url("https://alice:s3cret@example.com/r.git")
    assert parsed.username == "alice" and parsed.password == "s3cret"
    assert "s3cret" not in parsed.url + parsed.fetch_url + parsed.key + repr(parsed)
    assert "alice" not in parsed.url + parsed.fetch_url + parsed.key + repr(parsed)


def test_different_repositories_get_different_keys() -> None:
    urls = ["https://h/a/b", "https://h/a/c", "https://h/a-b", "https://h:8443/a/b", "http://h/a/b", "git://h/a/b"]
    assert len({normalize_url(u).key for u in urls}) == len(urls)


def test_local_paths_keep_their_git_suffix(tmp_path: object) -> None:
    assert normalize_url("/srv/x.git").key != normalize_url("/srv/x").key
    assert normalize_url("/srv/x/").key == normalize_url("file:///srv/x").key


@pytest.mark.parametrize(
    ("url", "rejected"),
    [
        ("https://h/../../etc/passwd", True),
        ("https://h/a/%2e%2e/b", True),
        ("git@host:../../x", True),
        ("../../../../etc", False),
        ("/..", False),
        ("https://h/" + "a" * 300, False),
        ("https://h/ünïcødé/ŕëpø", False),
        ("git@h:../../x", False),  # a one-letter "host" is read as a drive letter: a local path, resolved
    ],
)
def test_keys_never_name_a_path_outside_the_root(url: str, rejected: bool) -> None:
    if rejected:
        with pytest.raises(InvalidURLError, match=r"path segments '\.' and '\.\.' are not allowed"):
            normalize_url(url)
        return
    key = normalize_url(url).key
    assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", key), key
    assert "/" not in key and not key.startswith(".") and len(key) <= 80


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("-uhelp", "start with '-'"),
        ("--upload-pack=touch /tmp/x", "start with '-'"),
        ("ext::sh -c touch% /tmp/pwned", "transport helpers"),
        ("fd::17", "transport helpers"),
        ("https://h/a\nb", "control characters"),
        ("https://h/a\x00b", "control characters"),
        ("ftp://h/a/b", "unsupported scheme"),
        ("https:///a/b", "no host"),
        ("https://h", "names no repository path"),
        ("https://h/a?x=1", "query strings"),
        ("https://h:99999/a", "malformed"),
        ("https://h/a/../b", "'..'"),
        ("file://otherhost/x", "local absolute path"),
        ("https://exa mple.com/a", "not a valid host"),
    ],
)
def test_bad_urls_are_rejected_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(InvalidURLError) as caught:
        normalize_url(url)
    assert reason in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_rejected_url_messages_hide_credentials() -> None:
    with pytest.raises(InvalidURLError) as caught:
        normalize_url("https://bob:hunter2@h/a?q=1")
    assert "hunter2" not in str(caught.value)


def test_non_string_input_is_rejected() -> None:
    with pytest.raises(InvalidURLError, match="expected a str"):
        normalize_url(42)  # type: ignore[arg-type]
