"""Settings declared once: the declaration, the group objects, the flat names, the read-back and the docs tables."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

import repocache
from repocache import AsyncRepoCache, ColdOptions, ConfigError, Freshness, Maintenance, RepoCache, Settings, Transport
from repocache.pytest_plugin import RepoCacheFactory
from repocache.settings import (
    OPTIONS,
    TABLE_FILES,
    CacheOptions,
    environment_defaults,
    render_tables,
    settings_table,
)

ROOT = Path(__file__).resolve().parent.parent
GROUPS = {"freshness": Freshness, "cold": ColdOptions, "maintenance": Maintenance, "transport": Transport}


@pytest.mark.parametrize("name", TABLE_FILES)
def test_docs_settings_tables_are_generated_from_the_declaration(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    assert render_tables(text) == text, f"{name} drifted: run `python -m repocache.settings` to regenerate it"


def test_every_declared_option_is_in_the_table_once() -> None:
    table = settings_table()
    names = [row.name for row in OPTIONS]
    assert len(names) == len(set(names))
    for row in OPTIONS:
        assert f"`{row.name}`" in table
        assert row.doc and row.accepted


def test_the_keywords_of_repocache_are_exactly_the_declared_options() -> None:
    declared = {row.name for row in OPTIONS} - {"root", "progress"}
    assert set(CacheOptions.__annotations__) == declared | set(GROUPS)
    parameters = inspect.signature(RepoCache.__init__).parameters
    assert list(parameters)[:3] == ["self", "root", "progress"]
    assert parameters["options"].kind is inspect.Parameter.VAR_KEYWORD


def test_async_cache_and_the_plugin_factory_take_the_same_options() -> None:
    for function in (RepoCache.__init__, AsyncRepoCache.__init__, RepoCacheFactory.__call__):
        assert inspect.signature(function).parameters["options"].annotation == "Unpack[CacheOptions]"


def test_defaults_of_the_declaration_are_the_defaults_of_settings() -> None:
    settings = Settings()
    for row in OPTIONS:
        if row.group is None and row.name in {f.name for f in dataclasses.fields(Settings)}:
            assert getattr(settings, row.name) == row.parse(row.name, row.default)
        elif row.group is not None:
            assert getattr(getattr(settings, row.group), row.field) == row.parse(row.name, row.default)


def test_cache_settings_reads_every_option_back_by_group_and_by_flat_name(tmp_path: Path) -> None:
    with RepoCache(
        tmp_path / "c",
        max_bytes="1MiB",
        fetch_ttl="auto",
        freshness=Freshness(fetch_ttl_min=5, fetch_ttl_max=50, refresh="background", max_stale=None),
        cold=ColdOptions(min_bytes=2048, retention=60.0, publish_after=7.0),
        maintenance=Maintenance(max_packs=4, window_memory=0, threads=2, grace=1.0),
        transport=Transport(allow_local=True, connect_timeout=3.0, idle_timeout=4.0),
    ) as cache:
        settings = cache.settings
        assert settings.max_bytes == cache.max_bytes == 1024**2
        assert settings.fetch_ttl == cache.fetch_ttl == "auto"
        assert settings.freshness.fetch_ttl_min == settings.fetch_ttl_min == 5.0
        assert settings.max_stale is None
        assert settings.cold.min_bytes == settings.cold_min_bytes == cache.cold_min_bytes == 2048
        assert cache.cold_retention == 60.0 and cache.cold_publish_after == 7.0
        assert settings.maintenance.max_packs == settings.maintenance_max_packs == 4
        assert settings.maintenance_window_memory == 0 and settings.maintenance.mode == "auto"
        assert settings.transport.connect_timeout == 3.0
        for row in OPTIONS:
            if row.group is not None and row.name != "maintenance":
                assert getattr(settings, row.name) == getattr(getattr(settings, row.group), row.field)
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.max_bytes = 1  # type: ignore[misc]


def test_flat_names_of_grouped_settings_keep_working(tmp_path: Path) -> None:
    with RepoCache(
        tmp_path / "c",
        maintenance="off",
        maintenance_max_packs=3,
        cold_publish="clone",
        refresh="background",
        idle_timeout=9.0,
    ) as cache:
        settings = cache.settings
        assert settings.maintenance == Maintenance(mode="off", max_packs=3)
        assert settings.cold == ColdOptions(publish="clone")
        assert settings.freshness == Freshness(refresh="background")
        assert settings.transport == Transport(idle_timeout=9.0)


def test_a_group_object_beside_flat_names_of_its_settings_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="maintenance_threads cannot be given beside maintenance="):
        RepoCache(tmp_path / "c", maintenance=Maintenance(max_packs=4), maintenance_threads=2)


def test_group_objects_validate_with_the_flat_name_in_the_message() -> None:
    with pytest.raises(ConfigError, match="maintenance_max_packs=0"):
        Maintenance(max_packs=0)
    with pytest.raises(ConfigError, match=r"fetch_ttl_max=1\.0 is below fetch_ttl_min=2\.0"):
        Freshness(fetch_ttl_min=2, fetch_ttl_max=1)
    with pytest.raises(ConfigError, match="cold_compression='gzip'"):
        ColdOptions(compression="gzip")
    with pytest.raises(ConfigError, match="connect_timeout=0"):
        Transport(connect_timeout=0)
    with pytest.raises(ConfigError, match="cold=42 is not accepted; expected a ColdOptions"):
        Settings(cold=42)  # type: ignore[arg-type]


def test_an_unknown_keyword_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_byte'"):
        RepoCache(tmp_path / "c", max_byte=1)  # type: ignore[call-arg]


def test_environment_defaults_parse_the_declared_variables() -> None:
    environ = {"REPOCACHE_MAX_BYTES": "2KiB", "REPOCACHE_COLD_PUBLISH": "always", "REPOCACHE_PINS": " "}
    assert environment_defaults(environ) == {"max_bytes": 2048, "cold_publish": "always"}
    assert environment_defaults({"REPOCACHE_DIR": "/tmp/x"}) == {"root": Path("/tmp/x")}
    with pytest.raises(ConfigError, match="REPOCACHE_COLD_PUBLISH='sometimes'"):
        environment_defaults({"REPOCACHE_COLD_PUBLISH": "sometimes"})


def _verbs(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items() if not name.startswith("_") and inspect.isfunction(value)}


def test_async_cache_offers_every_public_verb_of_the_cache() -> None:
    assert _verbs(AsyncRepoCache) == _verbs(RepoCache)
    for name in _verbs(RepoCache) - {"close"}:  # the async close waits for the calls in flight instead
        ours = inspect.signature(getattr(RepoCache, name)).parameters
        theirs = inspect.signature(getattr(AsyncRepoCache, name)).parameters
        assert list(ours) == list(theirs), name


def test_the_group_objects_are_public() -> None:
    for cls in (*GROUPS.values(), Settings):
        assert cls.__name__ in repocache.__all__
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_the_plugin_factory_opens_caches_with_settings(repo_cache_factory: RepoCacheFactory) -> None:
    cache = repo_cache_factory(max_bytes="1MiB", maintenance=Maintenance(mode="off"))
    assert cache.max_bytes == 1024**2 and cache.settings.maintenance.mode == "off"
    assert repo_cache_factory().root != cache.root
