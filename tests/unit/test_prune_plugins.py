"""The broker image's build step that deletes unneeded plugin directories: it keeps
exactly the dependency closure of rabbit and the enabled plugins."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = (Path(__file__).resolve().parents[2] / "harness" / "build_contexts" / "rabbitmq"
          / "prune_plugins.py")


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prune_plugins", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def plugin(root: Path, name: str, version: str, deps: str = "", included: str = "") -> None:
    ebin = root / f"{name}-{version}" / "ebin"
    ebin.mkdir(parents=True)
    (ebin / f"{name}.app").write_text(
        f"{{application, {name}, [{{vsn, \"{version}\"}},\n"
        f"  {{applications, [kernel, stdlib{', ' + deps if deps else ''}]}},\n"
        f"  {{included_applications, [{included}]}}]}}.\n")


def test_keeps_the_closure_of_rabbit_and_the_enabled_plugins(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugin(plugins, "rabbit", "3.10.8", "rabbit_common, ra", included="cuttlefish")
    plugin(plugins, "rabbit_common", "3.10.8")
    plugin(plugins, "rabbitmq_prelaunch", "3.10.8")
    plugin(plugins, "ra", "2.2.0", "gen_batch_server")
    plugin(plugins, "gen_batch_server", "0.8.8")
    plugin(plugins, "cuttlefish", "3.0.1")
    plugin(plugins, "rabbitmq_management", "3.10.8", "cowboy")
    plugin(plugins, "cowboy", "2.8.0")
    plugin(plugins, "rabbitmq_mqtt", "3.10.8", "ranch")
    plugin(plugins, "ranch", "2.1.0")
    (plugins / "README").write_text("not a plugin")
    enabled = tmp_path / "enabled_plugins"
    enabled.write_text("[rabbitmq_management].\n")
    assert load().main([str(plugins), str(enabled)]) == 0
    kept = {d.name for d in plugins.iterdir() if d.is_dir()}
    assert kept == {"rabbit-3.10.8", "rabbit_common-3.10.8", "rabbitmq_prelaunch-3.10.8",
                    "ra-2.2.0", "gen_batch_server-0.8.8", "cuttlefish-3.0.1",
                    "rabbitmq_management-3.10.8", "cowboy-2.8.0"}
    assert (plugins / "README").is_file()


def test_an_enabled_plugin_that_is_not_there_stops_the_build(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugins = tmp_path / "plugins"
    plugin(plugins, "rabbit", "3.10.8")
    plugin(plugins, "rabbitmq_prelaunch", "3.10.8")
    enabled = tmp_path / "enabled_plugins"
    enabled.write_text("[rabbitmq_management].\n")
    assert load().main([str(plugins), str(enabled)]) == 1
    assert "rabbitmq_management" in capsys.readouterr().err
    assert (plugins / "rabbit-3.10.8").is_dir()  # nothing deleted
