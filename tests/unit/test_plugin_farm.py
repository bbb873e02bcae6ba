"""The local backend's short code path: a RABBITMQ_HOME of symlinks holding only
the plugins a private node needs (``harness.cluster.local.plugin_farm``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cluster import local


def fake_install(root: Path, *, with_management: bool = True) -> Path:
    """A package layout like Debian's: bin/rabbitmq-server -> lib/.../sbin/rabbitmq-server."""
    home = root / "lib" / "rabbitmq_server-3.10.8"
    (home / "sbin").mkdir(parents=True)
    (home / "escript").mkdir()
    (home / "sbin" / "rabbitmq-server").write_text("#!/bin/sh\n")
    (home / "sbin" / "rabbitmq-env").write_text("#!/bin/sh\n")
    apps = {"rabbit": "rabbit_common", "rabbit_common": "", "rabbitmq_prelaunch": "",
            "rabbitmq_mqtt": ""}
    if with_management:
        apps["rabbitmq_management"] = "cowboy"
        apps["cowboy"] = ""
    for name, deps in apps.items():
        ebin = home / "plugins" / f"{name}-1.0.0" / "ebin"
        ebin.mkdir(parents=True)
        (ebin / f"{name}.app").write_text(
            f"{{application, {name}, [{{applications, [kernel, stdlib, {deps or 'sasl'}]}}]}}.")
    (root / "bin").mkdir()
    (root / "bin" / "rabbitmq-server").symlink_to(home / "sbin" / "rabbitmq-server")
    return root / "bin" / "rabbitmq-server"


def test_farm_links_only_the_needed_plugins(tmp_path: Path) -> None:
    farm = tmp_path / "node" / "rabbitmq-home"
    (farm / "plugins" / "stale").mkdir(parents=True)  # what a previous start left
    sbin = local.plugin_farm(farm, str(fake_install(tmp_path / "pkg")))
    assert sbin == farm / "sbin"
    assert sorted(p.name for p in (farm / "plugins").iterdir()) == [
        "cowboy-1.0.0", "rabbit-1.0.0", "rabbit_common-1.0.0", "rabbitmq_management-1.0.0",
        "rabbitmq_prelaunch-1.0.0"]
    # Every plugin entry is a link into the package; sbin is a real directory
    # (RABBITMQ_HOME is the realpath of sbin/..) of links.
    home = tmp_path / "pkg" / "lib" / "rabbitmq_server-3.10.8"
    assert all(p.is_symlink() and p.resolve().parent == home / "plugins"
               for p in (farm / "plugins").iterdir())
    assert not sbin.is_symlink() and (sbin / "rabbitmq-env").resolve() == \
        home / "sbin" / "rabbitmq-env"
    assert (farm / "escript").resolve() == home / "escript"


def test_no_farm_when_a_needed_plugin_is_missing(tmp_path: Path) -> None:
    server = fake_install(tmp_path / "pkg", with_management=False)
    assert local.plugin_farm(tmp_path / "farm", str(server)) is None  # boots as is
    assert local.plugin_farm(tmp_path / "farm2", str(tmp_path / "nowhere" / "x")) is None


def test_the_real_install_needs_the_management_closure(tmp_path: Path) -> None:
    if not Path(local.RABBITMQ_SERVER).exists():
        pytest.skip("no rabbitmq-server package here")
    sbin = local.plugin_farm(tmp_path / "farm")
    assert sbin is not None
    names = {p.name.rsplit("-", 1)[0] for p in (sbin.parent / "plugins").iterdir()}
    assert {"rabbit", "rabbit_common", "rabbitmq_management", "rabbitmq_management_agent",
            "rabbitmq_web_dispatch", "cowboy", "ra", "osiris"} <= names
    assert "rabbitmq_mqtt" not in names and len(names) < 40
