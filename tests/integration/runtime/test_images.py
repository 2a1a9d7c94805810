"""Functions on an image fork from that image's zygote: packages on the path,
``preload`` modules imported once and shared."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from spanfaas.model import ImageRef, parse_manifest
from tests.integration.runtime.conftest import Harness

pytestmark = pytest.mark.asyncio(loop_scope="module")

USES_PACKAGE = """
import os
import heavypkg

def handler(event, context):
    return {"loaded_in": heavypkg.LOADED_IN, "template": os.getppid(), "answer": heavypkg.answer()}
"""


def make_image(root: Path, name: str) -> ImageRef:
    site = root / f"image-{name}" / "site-packages"
    (site / "heavypkg").mkdir(parents=True)
    (site / "heavypkg" / "__init__.py").write_text("import os\nLOADED_IN = os.getpid()\ndef answer():\n    return 42\n")
    for d in (site.parent, site, site / "heavypkg"):
        d.chmod(0o755)
    (site / "heavypkg" / "__init__.py").chmod(0o644)
    return ImageRef(id=f"img-{name}", paths=[str(site)], preload=["heavypkg"])


async def _deploy_on(h: Harness, name: str, image: ImageRef) -> None:
    d = h.root / name
    d.mkdir(parents=True)
    (d / "handler.py").write_text(USES_PACKAGE)
    await h.rt.deploy(parse_manifest(f'name = "{name}"\nisolation = "reuse"\n'), d, image=image)


async def test_functions_on_an_image_share_its_preloaded_packages(harness: Harness, tmp_path: Path) -> None:
    image = make_image(tmp_path, "a")
    await _deploy_on(harness, "on-image-1", image)
    await _deploy_on(harness, "on-image-2", image)
    outs = [json.loads((await harness.invoke(n)).output) for n in ("on-image-1", "on-image-2")]
    assert [o["answer"] for o in outs] == [42, 42]
    # Imported once, in the image's zygote: neither template imported it itself.
    assert outs[0]["loaded_in"] == outs[1]["loaded_in"]
    assert outs[0]["loaded_in"] not in (outs[0]["template"], outs[1]["template"])


async def test_a_function_without_the_image_does_not_see_its_packages(harness: Harness) -> None:
    spec = await harness.deploy("no-image", "def handler(e, c):\n    import heavypkg\n")
    r = await harness.invoke(spec.name)
    assert r.error is not None and r.error.type == "ModuleNotFoundError"


async def test_the_image_zygote_stops_with_its_last_function(harness: Harness, tmp_path: Path) -> None:
    image = make_image(tmp_path, "b")
    await _deploy_on(harness, "short-lived", image)
    pid = harness.rt.info()["zygotes"][image.id]
    await harness.rt.remove("short-lived")
    assert image.id not in harness.rt.info()["zygotes"]
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes().split(b")")[1][:3]:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"image zygote {pid} still running")
