"""The itkwidgets viewer's web assets, installed locally so that the 3D view renders offline.

itkwidgets 1.0 shows its viewer (itk-vtk-viewer) in an ImJoy window: the JupyterLab extension
``imjoy-jupyterlab-extension`` loads vue, vue-js-modal, vue-window and imjoy-core from CDNs, imjoy
loads imjoy-rpc from a CDN, and the viewer page comes from an IPFS gateway and loads its UI from
a CDN. None of it is on the user's machine. :func:`install_viewer_assets` (run at install time by
``scripts/fetch-viewer-assets``, never at view time) puts all of it under one folder:

- ``static/ctgan-viewer/<package>/``: pinned npm packages (:data:`NPM_PACKAGES`), fetched with
  ``npm pack`` and checked against their sha512 integrity, trimmed of what the viewer never
  loads; the viewer page's own CDN loads pointed at the local copies;
- ``labextensions/imjoy-jupyterlab-extension/``: a copy of the installed extension whose loader
  takes these copies (:func:`patch_extension_loader`); the installed files are not touched;
- ``jupyter_server_config.json`` (:func:`server_config`): serves ``static/`` at
  ``<base_url>/static/`` and puts the copied extension ahead of the installed one;
  :func:`install_server_config` adds it to the environment's ``etc/jupyter/`` config so that a
  plain ``jupyter lab`` started from the environment picks it up.

At view time :func:`viewer_assets_problems` says what is missing or stale (a reinstalled extension
of another version, say), and :data:`VIEWER_SRC` is the viewer page's address: a placeholder
origin that the copied extension turns into this server's own address.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# The viewer page's address as the kernel gives it to ImJoy. It must be an absolute http(s) URL;
# the kernel does not know the browser's origin, so the copied extension replaces this origin by
# ``location.origin + <base_url> + "static/ctgan-viewer/"`` (a ".invalid" name never resolves).
PLACEHOLDER_ORIGIN = "http://ctgan-viewer.invalid/"
VIEWER_SRC = PLACEHOLDER_ORIGIN + "itk-vtk-viewer/index.html"
UI_HREF = PLACEHOLDER_ORIGIN + "itk-viewer-bootstrap-ui/bootstrapUIMachineOptions.js.es.js"
ENV_CONFIG_DIR = Path(sys.prefix) / "etc" / "jupyter"  # this environment's Jupyter config
STATIC_NAME = "ctgan-viewer"  # served at <base_url>/static/ctgan-viewer/
EXTENSION = "imjoy-jupyterlab-extension"
EXTENSION_VERSION = "0.2.6"  # the bundle whose loader patch_extension_loader knows
MARKER = "ctgan-viewer-assets"  # in every patched file: tells a patched copy from the original


@dataclass(frozen=True)
class NpmPackage:
    """A pinned npm package: where its files go, and which of them (``keep``: path prefixes
    inside the tarball's ``package/``; ``drop``: prefixes, or ``folder/*suffix``, left out of
    those)."""

    name: str
    version: str
    integrity: str  # npm's sha512 of the tarball
    keep: tuple[str, ...]
    drop: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        return self.name.split("/")[-1]


NPM_PACKAGES: tuple[NpmPackage, ...] = (
    NpmPackage(
        "itk-vtk-viewer",
        "14.51.0",
        "sha512-i1H0PfekLdCfL45lZ96aWCoh4thzxeexiGJ3NYC9euF1WefXW0P1JijBLIJfrDBvp5fhjncj/EEnIW1auBh+zw==",
        keep=("dist/",),
        # image-io / mesh-io read files dropped on the page (never, inside itkwidgets: the
        # kernel sends the image); Compare is the viewer's compare mode; the pipelines' .js
        # (UMD) loads the plain .wasm, so the .umd.wasm copies are never requested; the CDN
        # build and the service worker are other entry points. (The browser test lists what
        # the page loads.)
        drop=(
            "dist/itk/image-io/",
            "dist/itk/mesh-io/",
            "dist/itk/pipeline/Compare",
            "dist/itk/pipeline/*.umd.wasm",
            "dist/itkVtkViewerCDN",
            "dist/124.itkVtkViewerCDN",
            "dist/serviceWorker.js",
            "dist/workbox-",
        ),
    ),
    NpmPackage(
        "imjoy-core",
        "0.14.5",
        "sha512-G0ybhLq57vOSM+4DhJ7A/3WSjJdbzk+WoEqg4+c5clkRhLOYY5VfI6oJ4MI664ZsVVgIinswsEJWbHAWQOBxFg==",
        keep=("dist/imjoy-core.min.js", "dist/imjoy-rpc.min.js", "dist/imjoy-loader.js"),
    ),
    NpmPackage(
        "vue",
        "2.6.10",
        "sha512-ImThpeNU9HbdZL3utgMCq0oiMzAkt1mcgy3/E6zWC/G6AaQoeuFdsl9nDhTDU3X1R6FK7nsIUuRACVcjI+A2GQ==",
        keep=("dist/vue.min.js",),
    ),
    NpmPackage(
        "vue-js-modal",
        "1.3.35",
        "sha512-DKtxUCW/oprM/ndn9h/cnVgsmqjQ/ARy5rH4q/11Pas04og2td+sltl91H/rlwXTwJIqWyt+lJizK5o4ErjWIQ==",
        keep=("dist/index.js", "dist/styles.css"),
    ),
    NpmPackage(
        # The extension asks for @oeway/vue-window@2.4.1-a (not on npm), a fork of this one.
        "@hscmap/vue-window",
        "2.4.1",
        "sha512-Cq3TP8DqvB0EA0054wpOrhuYA5DNxDTlQ4uGzp7iqja2xySmVa/9SyxP0eyWQ+mAUWhBLdhZ9Yd7KVj14goTzA==",
        keep=("standalone/dist/vue-window-standalone.js",),
    ),
    NpmPackage(
        "itk-viewer-bootstrap-ui",
        "0.30.0",
        "sha512-JfXAeCEgllRblolFwB4HaPQp+AyPzUt8s3g74LVnWLkvOyng4p24aO2Sjsk6ZIkWyZjdfZWAtvrdScKh/RPkKw==",
        keep=("dist/bootstrapUIMachineOptions.js.es.js",),
    ),
)

# The extension loader's CDN addresses and what replaces them (JavaScript expressions; the
# loader is a webpack eval string, hence the escaped quotes). ASSET_BASE is defined by the patch.
ASSET_BASE = "__ctganViewerAssets"
_LOADER_REPLACEMENTS = (
    (
        r"\"https://cdn.jsdelivr.net/npm/vue@2.6.10/dist/vue.min.js\"",
        ASSET_BASE + r" + \"vue/vue.min.js\"",
    ),
    (
        r"\"https://imjoy-team.github.io/vue-js-modal/index.js\"",
        ASSET_BASE + r" + \"vue-js-modal/index.js\"",
    ),
    (
        r"\"https://imjoy-team.github.io/vue-js-modal/styles.css\"",
        ASSET_BASE + r" + \"vue-js-modal/styles.css\"",
    ),
    (
        r"await injectScript(\"https://cdn.jsdelivr.net/npm/@oeway/vue-window@2.4.1-a/lib/index.js\");",
        # the standalone build registers its components itself; Vue.use then needs a no-op
        r"await injectScript("
        + ASSET_BASE
        + r" + \"vue-window/vue-window-standalone.js\"); "
        + r"window.VueWindow = window.VueWindow || { install() {} };",
    ),
    (
        r"const imjoyCore = await loadImJoyCore(config);",
        r"config.base_url = config.base_url || "
        + ASSET_BASE
        + r" + \"imjoy-core/\"; "
        + r"config.default_rpc_base_url = config.default_rpc_base_url || "
        + ASSET_BASE
        + r" + \"imjoy-core/\"; "
        + r"const imjoyCore = await loadImJoyCore(config);",
    ),
)
# Defines ASSET_BASE and rewrites the placeholder origin of windows' addresses; put ahead of the
# loader module (plain JavaScript, outside any eval string).
_PRELUDE = f"""/* {MARKER}: served copies of the CDN assets (ctgan.viewer_assets) */
(function () {{
  var data = document.getElementById("jupyter-config-data");
  var baseUrl = data ? JSON.parse(data.textContent).baseUrl || "/" : "/";
  window.{ASSET_BASE} = location.origin + baseUrl + "static/{STATIC_NAME}/";
  window.__ctganViewerRewrite = function (value) {{
    return typeof value === "string" && value.indexOf("{PLACEHOLDER_ORIGIN}") === 0
      ? window.{ASSET_BASE} + value.slice({len(PLACEHOLDER_ORIGIN)})
      : value;
  }};
}})();
"""
_CREATE_WINDOW = "async createWindow(_plugin, w, extra_config) {"
_CREATE_WINDOW_PATCH = (
    _CREATE_WINDOW
    + f"\n                    /* {MARKER} */ if (w) {{ w.src = window.__ctganViewerRewrite(w.src);"
    " const ui = w.config && w.config.uiMachineOptions;"
    " if (ui) { ui.href = window.__ctganViewerRewrite(ui.href); } }"
)
_PAGE_REPLACEMENTS = (
    ('src="https://lib.imjoy.io/imjoy-loader.js"', 'src="../imjoy-core/imjoy-loader.js"'),
    (
        "imjoyLoader.loadImJoyRPC({\n        api_version: '0.2.3'",
        "imjoyLoader.loadImJoyRPC({\n        base_url: new URL('../imjoy-core/', "
        f"document.baseURI).href, /* {MARKER} */\n        api_version: '0.2.3'",
    ),
)


def _replace_all(text: str, replacements: Iterable[tuple[str, str]], what: str) -> str:
    for old, new in replacements:
        if text.count(old) != 1:
            raise ValueError(
                f"{what}: expected one occurrence of {old[:80]!r}, found {text.count(old)}; "
                f"this patch knows {EXTENSION} {EXTENSION_VERSION} and itk-vtk-viewer 14.51.0"
            )
        text = text.replace(old, new)
    return text


def patch_viewer_page(html: str) -> str:
    """itk-vtk-viewer's index.html with ImJoy's loader and imjoy-rpc taken from ../imjoy-core/."""
    return _replace_all(html, _PAGE_REPLACEMENTS, "itk-vtk-viewer index.html")


def patch_extension_loader(javascript: str) -> str:
    """The extension's vendor chunk holding imjoy-core's loader, loading from the served copies."""
    return _PRELUDE + _replace_all(javascript, _LOADER_REPLACEMENTS, f"{EXTENSION} loader")


def patch_extension_index(javascript: str) -> str:
    """The extension's main chunk, rewriting the placeholder origin of windows' addresses."""
    return _replace_all(javascript, [(_CREATE_WINDOW, _CREATE_WINDOW_PATCH)], f"{EXTENSION} index")


def sri_sha512(data: bytes) -> str:
    """Subresource-integrity string of ``data`` as npm writes it: ``sha512-<base64>``."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch_tarball(package: NpmPackage, cache_dir: Path) -> bytes:
    """The package's tarball from ``cache_dir``, or from the npm registry with ``npm pack`` when
    absent there; either way checked against its pinned integrity."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = f"{package.name.lstrip('@').replace('/', '-')}-{package.version}.tgz"
    path = cache_dir / name
    if not path.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise FileNotFoundError(
                f"npm not found, and {path} is not in the cache: install Node.js (npm) or put "
                f"the tarball of {package.name}@{package.version} there"
            )
        logger.info("npm pack %s@%s", package.name, package.version)
        subprocess.run(
            [npm, "pack", f"{package.name}@{package.version}", "--silent"],
            cwd=cache_dir,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    data = path.read_bytes()
    if sri_sha512(data) != package.integrity:
        path.unlink()
        raise ValueError(
            f"{package.name}@{package.version}: integrity {sri_sha512(data)} does not match the "
            f"pinned {package.integrity}; the tarball was removed, run the set-up again"
        )
    return data


def _matches(path: str, pattern: str) -> bool:
    """``pattern`` is a path prefix, or ``folder/*suffix`` for the files of a folder by ending."""
    if "/*" in pattern:
        folder, suffix = pattern.split("/*", 1)
        return path.startswith(folder + "/") and path.endswith(suffix)
    return path.startswith(pattern)


def _kept(package: NpmPackage, member: str) -> str | None:
    """The path under the package's folder for a tarball member, or None when left out."""
    inside = member.split("/", 1)[1] if "/" in member else ""
    if not any(inside.startswith(k) for k in package.keep):
        return None
    if any(_matches(inside, d) for d in package.drop) or inside.endswith(".map"):
        return None
    for prefix in sorted(package.keep, key=len, reverse=True):
        if prefix.endswith("/") and inside.startswith(prefix):
            return inside[len(prefix) :]
    return Path(inside).name


def extract_package(package: NpmPackage, tarball: bytes, static_dir: Path) -> int:
    """Write the kept files of the tarball to ``static_dir/<folder>/``; returns their bytes."""
    target = static_dir / package.folder
    shutil.rmtree(target, ignore_errors=True)
    total = 0
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for member in archive.getmembers():
            relative = _kept(package, member.name) if member.isfile() else None
            if relative is None:
                continue
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            destination.write_bytes(source.read())
            total += member.size
    return total


def installed_extension_dir() -> Path:
    """The installed imjoy-jupyterlab-extension's labextension folder (first on Jupyter's path)."""
    from jupyter_core.paths import jupyter_path

    for folder in jupyter_path("labextensions"):
        candidate = Path(folder) / EXTENSION
        if (candidate / "package.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"{EXTENSION} is not installed in this environment's Jupyter paths; install "
        f"itkwidgets[lab] (pip install -e . does) and run the set-up again"
    )


def _package_version(extension_dir: Path) -> str:
    return json.loads((extension_dir / "package.json").read_text())["version"]


def copy_patched_extension(source: Path, labextensions_dir: Path) -> Path:
    """A copy of the installed extension under ``labextensions_dir`` with its loader patched."""
    version = _package_version(source)
    if version != EXTENSION_VERSION:
        raise ValueError(
            f"{EXTENSION} {version} is installed; this set-up patches {EXTENSION_VERSION}: pin "
            f"it (pip install '{EXTENSION.replace('-', '_')}=={EXTENSION_VERSION}')"
        )
    target = labextensions_dir / EXTENSION
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.map"))
    static = target / "static"
    loaders = list(static.glob("vendors-node_modules_imjoy-core_dist_imjoy-loader_js*.js"))
    indexes = list(static.glob("lib_index_js.*.js"))
    if len(loaders) != 1 or len(indexes) != 1:
        raise ValueError(
            f"{EXTENSION} {version}: expected one imjoy-loader chunk and one lib_index chunk in "
            f"{static}; found {[p.name for p in loaders + indexes]}"
        )
    loaders[0].write_text(patch_extension_loader(loaders[0].read_text()))
    indexes[0].write_text(patch_extension_index(indexes[0].read_text()))
    return target


def server_config(assets_dir: Path) -> dict:
    """Jupyter server config serving the assets and preferring the patched extension copy."""
    return {
        "ServerApp": {"extra_static_paths": [str(assets_dir / "static")]},
        "LabApp": {"extra_labextensions_path": [str(assets_dir / "labextensions")]},
    }


def install_server_config(assets_dir: Path, config_dir: Path = ENV_CONFIG_DIR) -> Path:
    """Add :func:`server_config` to ``<config_dir>/jupyter_server_config.json`` (default: this
    environment's ``etc/jupyter``, read by every ``jupyter lab`` started from it), keeping the
    file's other settings."""
    path = Path(config_dir) / "jupyter_server_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    for section, values in server_config(assets_dir).items():
        config.setdefault(section, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def _serves(path: Path, assets_dir: Path) -> bool:
    """Whether the Jupyter config file at ``path`` holds :func:`server_config`."""
    if not path.is_file():
        return False
    config = json.loads(path.read_text())
    return all(
        config.get(section, {}).get(key) == value
        for section, values in server_config(assets_dir).items()
        for key, value in values.items()
    )


def install_viewer_assets(
    assets_dir: Path, cache_dir: Path, config_dir: Path = ENV_CONFIG_DIR
) -> dict:
    """Fetch, check, trim and place every asset; patch a copy of the extension; write the server
    config. Idempotent. Returns the manifest (also written to ``assets_dir/manifest.json``)."""
    static_dir = assets_dir / "static" / STATIC_NAME
    packages = {}
    for package in NPM_PACKAGES:
        size = extract_package(package, fetch_tarball(package, cache_dir), static_dir)
        packages[package.name] = {
            "version": package.version,
            "integrity": package.integrity,
            "bytes": size,
        }
    page = static_dir / "itk-vtk-viewer" / "index.html"
    page.write_text(patch_viewer_page(page.read_text()))
    extension = copy_patched_extension(installed_extension_dir(), assets_dir / "labextensions")
    config_file = assets_dir / "jupyter_server_config.json"
    config_file.write_text(json.dumps(server_config(assets_dir), indent=2) + "\n")
    manifest = {
        "packages": packages,
        "extension": {"name": EXTENSION, "version": _package_version(extension)},
        "server_config": str(install_server_config(assets_dir, config_dir)),
    }
    (assets_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def default_assets_dir() -> Path:
    """``$CTGAN_VIEWER_ASSETS``, else ``.viewer-assets`` beside the ctgan package (the project
    root for an editable install)."""
    if os.environ.get("CTGAN_VIEWER_ASSETS"):
        return Path(os.environ["CTGAN_VIEWER_ASSETS"])
    return Path(__file__).resolve().parents[1] / ".viewer-assets"


def viewer_assets_problems(assets_dir: Path | None = None) -> list[str]:
    """What stops the offline itkwidgets view, in words (empty when nothing does)."""
    assets_dir = default_assets_dir() if assets_dir is None else Path(assets_dir)
    manifest_path = assets_dir / "manifest.json"
    if not manifest_path.is_file():
        return [f"the viewer assets are not installed ({manifest_path} not found)"]
    problems = []
    manifest = json.loads(manifest_path.read_text())
    static_dir = assets_dir / "static" / STATIC_NAME
    for package in NPM_PACKAGES:
        recorded = manifest.get("packages", {}).get(package.name, {})
        if recorded.get("version") != package.version or not (static_dir / package.folder).is_dir():
            problems.append(f"{package.name}@{package.version} is missing from {static_dir}")
    page = static_dir / "itk-vtk-viewer" / "index.html"
    if page.is_file() and MARKER not in page.read_text():
        problems.append(f"{page} is not the patched viewer page")
    copy = assets_dir / "labextensions" / EXTENSION
    try:
        installed = _package_version(installed_extension_dir())
    except FileNotFoundError as error:
        problems.append(str(error))
    else:
        copied = _package_version(copy) if (copy / "package.json").is_file() else None
        if copied != installed:
            problems.append(
                f"the patched {EXTENSION} copy is {copied}, the installed one {installed} "
                f"(reinstalled since the set-up)"
            )
    from jupyter_core.paths import jupyter_config_path

    configs = [Path(d) / "jupyter_server_config.json" for d in jupyter_config_path()]
    if not any(_serves(c, assets_dir) for c in configs):
        problems.append(
            f"no Jupyter config serves {assets_dir} (looked for jupyter_server_config.json in "
            f"{', '.join(str(c.parent) for c in configs)})"
        )
    return problems
