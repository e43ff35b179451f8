"""notebooks/explore.ipynb in a real browser: JupyterLab from this environment on 127.0.0.1,
headless Debian Chromium driven by Playwright, against models trained at the smoke profile.

Runs all cells, moves the explorer's axial slider, takes screenshots (pytest's tmp dir, and
``$CTGAN_SCREENSHOT_DIR`` when set), asserts that the slice viewer's image is there and changes
when the slider moves, and that the executed (saved) notebook holds no error output.
``$CTGAN_EXPLORE_PROJECT`` points it at other pipeline outputs than the smoke models it trains
(a scratch folder: the executed notebook is saved into its notebooks/).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)",
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs playwright (pip install playwright)"
)

REPOSITORY = Path(__file__).resolve().parents[1]
NOTEBOOK = REPOSITORY / "notebooks" / "explore.ipynb"
SETTINGS = ("3d-A", "3d-B")  # no segmentation term: no segmenter to train
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
PAGE_TIMEOUT_MS = int(os.environ.get("CTGAN_BROWSER_TIMEOUT_MS", "90000"))


def _phantom_pyramid(cfg) -> SimpleNamespace:
    """Without ctgan.preprocess: one phantom scan resized to the smoke scale shapes."""
    from scipy.ndimage import zoom

    from ctgan.config import scale_shapes
    from ctgan.intensity import hu_to_network
    from ctgan.phantom import generate_phantom_scan

    scan = generate_phantom_scan(0, 0, size=64)
    network = hu_to_network(scan.hu)
    extent_zyx_mm = np.array(scan.hu.shape) * np.array(scan.spacing_xyz_mm[::-1])
    shapes = scale_shapes(cfg.pyramid)
    volumes = [
        zoom(network, np.array(shape) / np.array(network.shape), order=1).astype(np.float32)
        for shape in shapes
    ]
    meta = {
        "seriesuid": scan.seriesuid,
        "origin_xyz_mm": list(scan.origin_xyz_mm),
        "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    }
    spacings = [tuple(extent_zyx_mm / np.array(shape)) for shape in shapes]
    return SimpleNamespace(volumes=volumes, spacings_zyx_mm=spacings, meta=meta)


def _smoke_pyramid(root: Path) -> SimpleNamespace:
    """The training pyramid at the smoke profile: the phantom preprocessed by ctgan.preprocess
    (written to root/data/preprocessed for the notebook's real row)."""
    from ctgan.config import load_config
    from ctgan.phantom import write_phantom_dataset

    cfg = load_config(root / "params.yaml", profile="smoke")
    if importlib.util.find_spec("ctgan.preprocess") is None:
        return _phantom_pyramid(cfg)
    from ctgan.luna16 import Luna16Folder
    from ctgan.preprocess import load_pyramid, preprocess_scan, save_pyramid

    phantom_dir = root / "data" / "phantom"
    uid = write_phantom_dataset(phantom_dir, scans=1, seed=0, size=64)[0]
    out_dir = root / "data" / "preprocessed"
    save_pyramid(preprocess_scan(Luna16Folder(phantom_dir), uid, cfg.pyramid), out_dir)
    return load_pyramid(out_dir)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def explore_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder like the repository after a smoke `dvc repro`: params.yaml,
    notebooks/explore.ipynb, data/preprocessed/ and models/<setting>/seed0/."""
    import torch

    from ctgan.config import load_config
    from ctgan.train import train_model

    torch.set_num_threads(1)
    if os.environ.get("CTGAN_EXPLORE_PROJECT"):
        # Your own pipeline outputs instead (a folder with models/ and data/preprocessed/); the
        # notebook is copied into its notebooks/ and saved there with its outputs.
        root = Path(os.environ["CTGAN_EXPLORE_PROJECT"])
        (root / "notebooks").mkdir(exist_ok=True)
        shutil.copy(NOTEBOOK, root / "notebooks" / NOTEBOOK.name)
        return root
    root = tmp_path_factory.mktemp("explore_project")
    shutil.copy(REPOSITORY / "params.yaml", root / "params.yaml")
    (root / "notebooks").mkdir()
    shutil.copy(NOTEBOOK, root / "notebooks" / NOTEBOOK.name)
    pyramid = _smoke_pyramid(root)
    for setting in SETTINGS:
        cfg = load_config(root / "params.yaml", setting=setting, profile="smoke")
        train_model(cfg, pyramid, root / "models" / setting / "seed0", seed=0)
    return root


@pytest.fixture
def jupyterlab(explore_project: Path, tmp_path: Path) -> Iterator[str]:
    """JupyterLab serving ``explore_project`` on a free port; yields the notebook's URL."""
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[name] = str(tmp_path / name.lower())
    settings = tmp_path / "lab-settings"
    env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    # Start the notebook's kernel without asking; no news, no update checks (offline).
    for plugin, values in LAB_SETTINGS.items():
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(tmp_path / "lab-workspaces")
    env["MPLBACKEND"] = "Agg"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={explore_project}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        *(["--allow-root"] if os.geteuid() == 0 else []),
    ]
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        command,
        cwd=explore_project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{port}/api/status?token={token}"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(
                    f"JupyterLab did not start:\n{(tmp_path / 'jupyterlab.log').read_text()}"
                )
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab/tree/notebooks/{NOTEBOOK.name}?token={token}"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and the kernels it started
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def _keep_screenshot(path: Path) -> None:
    target = os.environ.get("CTGAN_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def _cell_prompts(page) -> list[str]:
    return page.eval_on_selector_all(
        ".jp-CodeCell .jp-InputArea-prompt", "nodes => nodes.map(n => n.textContent.trim())"
    )


def test_explore_notebook_runs_and_slice_viewer_reacts_in_chromium(
    jupyterlab: str, explore_project: Path, tmp_path: Path
) -> None:
    profile = tmp_path / "chromium-profile"
    with sync_api.sync_playwright() as playwright:
        # Playwright takes the profile folder as user_data_dir (it refuses --user-data-dir).
        browser = playwright.chromium.launch_persistent_context(
            user_data_dir=str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            viewport={"width": 1300, "height": 1700},
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(jupyterlab)
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            # The kernel has started and is idle (status bar: "Python 3 (ipykernel) | Idle").
            page.wait_for_function(
                "() => /Python.*\\|\\s*Idle/.test("
                "document.querySelector('.jp-StatusBar-Widget')?.parentElement?.textContent ?? '')"
            )
            page.wait_for_timeout(1000)

            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            # Done when every code cell has an execution number and both slice viewers drew.
            page.wait_for_function(
                """() => {
                    const prompts = [...document.querySelectorAll(
                        '.jp-CodeCell .jp-InputArea-prompt')].map(n => n.textContent.trim());
                    return prompts.length > 0 && prompts.every(p => /^\\[\\d+\\]:$/.test(p))
                        && document.querySelectorAll('img.widget-image').length >= 2;
                }"""
            )
            prompts = _cell_prompts(page)
            images = page.locator("img.widget-image")
            explorer_image = images.first
            explorer_image.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            before_src = explorer_image.get_attribute("src")
            before_png = explorer_image.screenshot(path=str(tmp_path / "explore-before.png"))
            page.screenshot(path=str(tmp_path / "explore-page.png"), full_page=True)

            handle = page.locator(".widget-slider .noUi-handle").first
            handle.focus()
            for _ in range(2):
                handle.press("ArrowRight")
            page.wait_for_function(
                "([src]) => document.querySelector('img.widget-image').src !== src",
                arg=[before_src],
            )
            page.wait_for_timeout(500)
            after_png = explorer_image.screenshot(path=str(tmp_path / "explore-after.png"))
            # Inject the real volume at the chosen scale, then export it (ctgan.sample, for real).
            injected_src = explorer_image.get_attribute("src")
            page.get_by_role("button", name="Inject real").click()
            page.wait_for_function(
                "([src]) => document.querySelector('img.widget-image').src !== src",
                arg=[injected_src],
            )
            status = page.locator(".widget-html-content")
            status.filter(has_text=re.compile(r"injected at scale \d+ seed 0")).first.wait_for()
            page.get_by_role("button", name="Export .nii.gz").click()
            status.filter(has_text="wrote").first.wait_for()
            explorer_output = page.locator(".jp-OutputArea-output", has=images.first).first
            explorer_output.screenshot(path=str(tmp_path / "explore.png"))
            last_cell = page.locator(".jp-CodeCell").last
            last_cell.scroll_into_view_if_needed()
            last_cell.screenshot(path=str(tmp_path / "explore-3d-cell.png"))

            page.keyboard.press("Control+s")
            page.wait_for_timeout(1500)
        except sync_api.Error:
            page.screenshot(path=str(tmp_path / "explore-failure.png"), full_page=True)
            _keep_screenshot(tmp_path / "explore-failure.png")
            raise
        finally:
            browser.close()
    shots = ("explore-page.png", "explore-before.png", "explore-after.png", "explore.png")
    for name in (*shots, "explore-3d-cell.png"):
        _keep_screenshot(tmp_path / name)

    assert len(prompts) == 6, prompts
    assert before_png != after_png, "the slice viewer's image did not change with the slider"
    saved = json.loads((explore_project / "notebooks" / NOTEBOOK.name).read_text())
    code_cells = [c for c in saved["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] for c in code_cells), "not every cell ran (or was saved)"
    errors = [o for c in code_cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, [f"{e['ename']}: {e['evalue']}" for e in errors]
    widget_outputs = [
        o
        for c in code_cells
        for o in c["outputs"]
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert len(widget_outputs) >= 2
    assert np.frombuffer(before_png, np.uint8).size > 1000
    from ctgan.preprocess import load_pyramid

    pyramid = load_pyramid(explore_project / "data" / "preprocessed")
    exported = sorted((explore_project / "samples").glob("*injected-at-scale-*.nii.gz"))
    assert len(exported) == 1, exported
    image = sitk.ReadImage(str(exported[0]))
    assert image.GetSize()[::-1] == pyramid.volumes[-1].shape
    assert image.GetSpacing()[::-1] == pytest.approx(pyramid.spacings_zyx_mm[-1])
    assert image.GetPixelID() == sitk.sitkInt16
