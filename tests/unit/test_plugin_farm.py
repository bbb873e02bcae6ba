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


def test_farm_links_only_the_needed_plugins(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "_FARM_ROOT", tmp_path / "farms")
    sbin = local.plugin_farm(str(fake_install(tmp_path / "pkg")))
    assert sbin is not None and sbin.name == "sbin"
    farm = sbin.parent
    assert sorted(p.name for p in (farm / "plugins").iterdir()) == [
        "cowboy-1.0.0", "rabbit-1.0.0", "rabbit_common-1.0.0", "rabbitmq_management-1.0.0",
        "rabbitmq_prelaunch-1.0.0"]
    # sbin is a real directory (RABBITMQ_HOME is the realpath of sbin/..), its files links.
    assert not sbin.is_symlink() and (sbin / "rabbitmq-env").is_symlink()
    assert (farm / "escript").is_symlink()
    # A second call reuses the farm.
    assert local.plugin_farm(str(fake_install(tmp_path / "pkg2"))) != sbin  # other install
    assert local.plugin_farm(str(tmp_path / "pkg" / "bin" / "rabbitmq-server")) == sbin


def test_no_farm_when_a_needed_plugin_is_missing(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "_FARM_ROOT", tmp_path / "farms")
    server = fake_install(tmp_path / "pkg", with_management=False)
    assert local.plugin_farm(str(server)) is None  # the node boots from the package as is
    assert local.plugin_farm(str(tmp_path / "nowhere" / "rabbitmq-server")) is None
