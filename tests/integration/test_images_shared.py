"""Two gateways on one image directory (``[images] dir``), each with its own
store: a real gateway process (in-memory infrastructure, real uv builds from a
wheelhouse) and an image service in the test.  The images the process runs
functions on are not the other's to collect while it lives; once it dies
(SIGKILL: no shutdown, no clean-up) they are free at once, with nothing to
expire."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from images_support import function_dir, tiny_wheelhouse

from spanfaas.config import ImageSettings, Settings
from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess
from spanfaas.images import Actor, ImageService
from spanfaas.store import SQLiteStore

CALC_FN = "def handler(event, context):\n    return 3\n"  # the in-memory infrastructure does not put images on the path


def test_a_gateway_holds_the_images_its_functions_run_on_until_it_dies(tmp_path: Path) -> None:
    wheels, images = tiny_wheelhouse(tmp_path / "wheels"), tmp_path / "images"
    cfg = tmp_path / "spanfaas-config.toml"
    cfg.write_text(f'[images]\noffline = true\nfind_links = ["{wheels}"]\ndir = "{images}"\n')
    gw = GatewayProcess(tmp_path / "a", infra="memory", env={"SPANFAAS_CONFIG": str(cfg)})
    store = SQLiteStore(tmp_path / "b" / "spanfaas.db")
    other = ImageService(Settings(data_dir=str(tmp_path / "b"), images=ImageSettings(offline=True, find_links=[str(wheels)], dir=str(images))), store)
    admin = Actor("ops")
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as http:
            r = http.post("/v1/images/lists", json={"name": "tools", "packages": ["tinycalc", "tinyhelper"]})
            assert r.status_code == 201, r.text
            fn = function_dir(tmp_path, "calc", CALC_FN, 'packages = ["tinycalc"]\nlists = ["tools"]')
            r = http.put("/v1/functions/calc", content=pack_function(fn))
            assert r.status_code == 201, r.text
            (image,) = http.get("/v1/images").json()["images"]
        image_id = image["id"]

        gc = asyncio.run(other.gc(admin))  # its store has never heard of the image
        assert gc.removed == [] and gc.kept == [image_id] and other.repo.has(image_id)

        gw.kill()
        gc = asyncio.run(other.gc(admin))
        assert gc.removed == [image_id] and not other.repo.has(image_id)
    finally:
        gw.kill()
        other.close()
        store.close()
