"""The offline itkwidgets assets: integrity checks, trimming, the patches of the extension copy
and of the viewer page, the server config, and the view-time check (the browser test renders)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from ctgan import viewer_assets
from ctgan.viewer_assets import (
    EXTENSION,
    MARKER,
    NPM_PACKAGES,
    NpmPackage,
    copy_patched_extension,
    extract_package,
    fetch_tarball,
    install_server_config,
    installed_extension_dir,
    patch_extension_index,
    patch_extension_loader,
    patch_viewer_page,
    server_config,
    sri_sha512,
    viewer_assets_problems,
)

CDN = ("cdn.jsdelivr.net/npm/vue@", "imjoy-team.github.io/vue-js-modal", "@oeway/vue-window")


def make_tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_every_package_is_pinned_with_a_sha512_integrity():
    names = [p.name for p in NPM_PACKAGES]
    assert len(names) == len(set(names))
    for package in NPM_PACKAGES:
        assert package.integrity.startswith("sha512-") and len(package.integrity) == 95
        assert package.version[0].isdigit() and "^" not in package.version


def test_fetch_tarball_checks_the_integrity(tmp_path, monkeypatch):
    data = make_tarball({"dist/a.js": b"a"})
    good = NpmPackage("demo", "1.0.0", sri_sha512(data), keep=("dist/",))
    (tmp_path / "demo-1.0.0.tgz").write_bytes(data)
    assert fetch_tarball(good, tmp_path) == data
    bad = NpmPackage("demo", "1.0.0", "sha512-" + "A" * 86 + "==", keep=("dist/",))
    with pytest.raises(ValueError, match="integrity .* does not match the pinned"):
        fetch_tarball(bad, tmp_path)
    assert not (tmp_path / "demo-1.0.0.tgz").exists()  # removed: the next run fetches again
    monkeypatch.setattr(viewer_assets.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="npm not found, and .* is not in the cache"):
        fetch_tarball(good, tmp_path)


def test_extract_keeps_what_the_viewer_loads_and_drops_the_rest(tmp_path):
    package = NpmPackage(
        "@scope/demo",
        "1.0.0",
        "",
        keep=("dist/", "lib/one.js"),
        drop=("dist/io/", "dist/itk/pipeline/*.umd.wasm"),
    )
    tarball = make_tarball(
        {
            "dist/index.html": b"<html>",
            "dist/itk/pipeline/x.wasm": b"wasm",
            "dist/itk/pipeline/x.umd.wasm": b"the same wasm",
            "dist/io/huge.wasm": b"never loaded",
            "dist/index.js.map": b"map",
            "lib/one.js": b"one",
            "src/source.ts": b"ts",
        }
    )
    size = extract_package(package, tarball, tmp_path)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["demo/index.html", "demo/itk/pipeline/x.wasm", "demo/one.js"]
    assert size == len(b"<html>") + len(b"wasm") + len(b"one")


def test_the_loader_patch_replaces_every_cdn_address_of_the_installed_extension():
    static = installed_extension_dir() / "static"
    (loader,) = static.glob("vendors-node_modules_imjoy-core_dist_imjoy-loader_js*.js")
    original = loader.read_text()
    assert all(address in original for address in CDN)
    patched = patch_extension_loader(original)
    loader_source = patched.split("loadImJoyBasicApp(config) {", 1)[1].split("function ", 1)[0]
    assert not any(address in loader_source for address in CDN)
    assert "config.default_rpc_base_url = config.default_rpc_base_url ||" in patched
    assert patched.startswith(f"/* {MARKER}")
    with pytest.raises(ValueError, match="expected one occurrence of .* found 0"):
        patch_extension_loader("console.log('another version')")
    (index,) = static.glob("lib_index_js.*.js")
    assert "__ctganViewerRewrite(w.src)" in patch_extension_index(index.read_text())


def test_the_viewer_page_patch_loads_imjoy_locally():
    html = (
        '<script type="text/javascript" src="https://lib.imjoy.io/imjoy-loader.js"></script>\n'
        "const imjoyRPC = await imjoyLoader.loadImJoyRPC({\n        api_version: '0.2.3'\n"
    )
    patched = patch_viewer_page(html)
    assert "lib.imjoy.io" not in patched and 'src="../imjoy-core/imjoy-loader.js"' in patched
    assert "base_url: new URL('../imjoy-core/', document.baseURI).href" in patched
    with pytest.raises(ValueError, match="itk-vtk-viewer index.html: expected one occurrence"):
        patch_viewer_page("<html></html>")


def test_the_extension_copy_is_patched_and_the_installed_one_untouched(tmp_path):
    source = installed_extension_dir()
    before = {p.name: p.read_bytes() for p in (source / "static").glob("*.js")}
    target = copy_patched_extension(source, tmp_path)
    assert target == tmp_path / EXTENSION
    patched = [p.name for p in (target / "static").glob("*.js") if MARKER in p.read_text()]
    assert len(patched) == 2
    assert {p.name: p.read_bytes() for p in (source / "static").glob("*.js")} == before
    other = tmp_path / "other"
    (other / "static").mkdir(parents=True)
    (other / "package.json").write_text(json.dumps({"name": EXTENSION, "version": "9.9.9"}))
    with pytest.raises(ValueError, match="imjoy-jupyterlab-extension 9.9.9 is installed"):
        copy_patched_extension(other, tmp_path / "out")


def fake_assets(root: Path) -> Path:
    """An assets folder as install_viewer_assets leaves it, without the downloads."""
    static = root / "static" / viewer_assets.STATIC_NAME
    for package in NPM_PACKAGES:
        (static / package.folder).mkdir(parents=True)
    (static / "itk-vtk-viewer" / "index.html").write_text(f"<!-- {MARKER} -->")
    copy_patched_extension(installed_extension_dir(), root / "labextensions")
    packages = {p.name: {"version": p.version} for p in NPM_PACKAGES}
    (root / "manifest.json").write_text(json.dumps({"packages": packages}))
    return root


def test_problems_name_what_is_missing_and_clear_when_set_up(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    assert viewer_assets_problems(tmp_path / "none") == [
        f"the viewer assets are not installed ({tmp_path / 'none' / 'manifest.json'} not found)"
    ]
    assets = fake_assets(tmp_path / "assets")
    (problem,) = viewer_assets_problems(assets)
    assert problem.startswith(f"no Jupyter config serves {assets}")
    (tmp_path / "config").mkdir()
    kept = {"ServerApp": {"port": 9999}, "NotebookApp": {"x": 1}}
    (tmp_path / "config" / "jupyter_server_config.json").write_text(json.dumps(kept))
    path = install_server_config(assets, tmp_path / "config")
    written = json.loads(path.read_text())
    assert written["ServerApp"] == {"port": 9999, **server_config(assets)["ServerApp"]}
    assert written["NotebookApp"] == {"x": 1}
    assert written["LabApp"] == server_config(assets)["LabApp"]
    assert viewer_assets_problems(assets) == []
    package_json = assets / "labextensions" / EXTENSION / "package.json"
    package_json.write_text(json.dumps({"name": EXTENSION, "version": "0.0.1"}))
    (problem,) = viewer_assets_problems(assets)
    assert "copy is 0.0.1, the installed one 0.2.6 (reinstalled since the set-up)" in problem


def test_default_assets_dir_is_the_project_folder_or_the_environment_variable(monkeypatch):
    monkeypatch.delenv("CTGAN_VIEWER_ASSETS", raising=False)
    root = Path(viewer_assets.__file__).resolve().parents[1]
    assert viewer_assets.default_assets_dir() == root / ".viewer-assets"
    monkeypatch.setenv("CTGAN_VIEWER_ASSETS", "/somewhere")
    assert viewer_assets.default_assets_dir() == Path("/somewhere")
