"""Curated images on the real local runtime, through a real gateway process that
builds offline (--no-index) from a local wheelhouse: the real numpy wheel and
tiny wheels written by the tests.

One gateway serves the module; the tests run in order and build on each other's
state (the lists, the images, the deployed functions)."""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from images_support import config, function_dir, numpy_wheelhouse, tiny_wheelhouse

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

NUMPY_FN = """
import numpy as np
import tinycalc

def handler(event, context):
    values = np.arange(event["n"], dtype=np.int64)
    return {"sum": int(values.sum()), "dot": float(values @ values), "add": tinycalc.add(2, 3), "numpy": np.__version__}
"""
NUMPY_IMAGE = 'packages = ["numpy>=2", "tinycalc<2"]\nlists = ["science"]\npreload = ["numpy"]'
CALC_FN = "import tinycalc\n\ndef handler(event, context):\n    return {'add': tinycalc.add(event['a'], event['b'])}\n"
CALC_IMAGE = 'packages = ["tinycalc>=2"]\nlists = ["science"]'


class Site:
    def __init__(self, root: Path, gw: GatewayProcess) -> None:
        self.root = root
        self.gw = gw
        self.http = httpx.Client(base_url=gw.url, headers=gw.headers, timeout=120)

    def deploy(self, name: str, code: str, image: str) -> tuple[httpx.Response, float]:
        data = pack_function(function_dir(self.root, name, code, image))
        started = time.perf_counter()
        r = self.http.put(f"/v1/functions/{name}", content=data)
        return r, time.perf_counter() - started

    def builds(self) -> list[str]:
        """Image ids the gateway built, one per build, from its log."""
        return re.findall(r"built image ([0-9a-f]{12})", self.gw.log())

    def reuses(self) -> list[str]:
        return re.findall(r"image ([0-9a-f]{12}) reused", self.gw.log())


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    numpy_dir = numpy_wheelhouse()
    if numpy_dir is None:
        pytest.skip("the numpy wheel is not in .cache/wheelhouse; `make test` (scripts/test-deps.sh) fetches it once")
    root = Path(tempfile.mkdtemp(prefix="spanfaas-images-"))
    root.chmod(0o755)  # functions run as another uid: the images must be reachable
    cfg = config(root, tiny_wheelhouse(root / "wheels"), numpy_dir)
    gw = GatewayProcess(root / "data", infra="local", env={"SPANFAAS_CONFIG": str(cfg)})
    try:
        gw.start()
        s = Site(root, gw)
        r = s.http.post("/v1/images/lists", json={"name": "science", "packages": ["numpy>=1.26,<3", "tinycalc>=1,<3", "tinyhelper"]})
        assert r.status_code == 201, r.text
        yield s
        s.http.close()
    finally:
        gw.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_curated_image_builds_and_a_function_importing_its_packages_answers(site: Site) -> None:
    r, built_s = site.deploy("np-sum", NUMPY_FN, NUMPY_IMAGE)
    assert r.status_code == 201, r.text
    r = site.http.post("/v1/functions/np-sum/invoke", json={"n": 1000})
    assert r.status_code == 200, r.text
    import numpy

    assert r.json() == {"sum": 499500, "dot": 332833500.0, "add": 5, "numpy": numpy.__version__}
    assert len(site.builds()) == 1, site.gw.log()

    # The same request again (another function): the image is reused, nothing is installed.
    r, reused_s = site.deploy("np-sum-2", NUMPY_FN, NUMPY_IMAGE)
    assert r.status_code == 201, r.text
    assert site.http.post("/v1/functions/np-sum-2/invoke", json={"n": 3}).json()["sum"] == 3
    (image_id,) = site.builds()
    assert site.reuses() == [image_id], site.gw.log()
    (image,) = site.http.get("/v1/images").json()["images"]
    assert image["id"].startswith(image_id) and image["reuses"] == 1 and image["used_by"] == ["np-sum", "np-sum-2"]
    assert {p["name"]: p["direct"] for p in image["packages"]} == {"numpy": True, "tinycalc": True}
    print(f"\ndeploy with a fresh build: {built_s:.2f}s; same request again (reused): {reused_s:.2f}s; "
          f"install took {image['build_seconds']:.2f}s, {image['size'] / 2**20:.0f} MiB")


def test_requests_outside_the_lists_are_rejected_at_deploy_and_nothing_is_built(site: Site) -> None:
    before = (site.builds(), sorted(p.name for p in (site.root / "data" / "images").iterdir()))
    r, _ = site.deploy("too-new", NUMPY_FN, 'packages = ["numpy>=3", "scipy"]\nlists = ["science"]')
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "numpy>=3 is outside the approved range: numpy>=1.26,<3 (list science)" in detail
    assert "scipy is not approved by the selected lists" in detail
    assert site.http.get("/v1/functions/too-new").status_code == 404
    after = (site.builds(), sorted(p.name for p in (site.root / "data" / "images").iterdir()))
    assert after == before


def test_two_concurrent_deploys_of_one_new_image_build_it_once(site: Site) -> None:
    results: dict[str, int] = {}

    def deploy(name: str) -> None:
        results[name] = site.deploy(name, CALC_FN, CALC_IMAGE)[0].status_code

    threads = [threading.Thread(target=deploy, args=(f"calc-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {"calc-0": 201, "calc-1": 201}
    builds = site.builds()
    assert len(builds) == 2 and builds[0] != builds[1], site.gw.log()  # the numpy image, then this one, once
    for name in ("calc-0", "calc-1"):
        assert site.http.post(f"/v1/functions/{name}/invoke", json={"a": 20, "b": 22}).json() == {"add": 42}


def test_withdrawing_a_package_keeps_functions_running_and_rejects_new_deploys(site: Site) -> None:
    assert site.http.delete("/v1/images/lists/science/packages/tinycalc").status_code == 204
    assert site.http.post("/v1/functions/calc-0/invoke", json={"a": 1, "b": 2}).json() == {"add": 3}
    r, _ = site.deploy("calc-new", CALC_FN, CALC_IMAGE)
    assert r.status_code == 400 and "tinycalc>=2 is not approved by the selected lists" in r.json()["detail"]
    # a redeploy of a running function that needs it is rejected too; the running version keeps serving
    r, _ = site.deploy("calc-1", CALC_FN + "\n# v2\n", CALC_IMAGE)
    assert r.status_code == 400
    assert site.http.post("/v1/functions/calc-1/invoke", json={"a": 2, "b": 2}).json() == {"add": 4}

    # after a restart the functions come back on their images, without asking the lists again
    site.http.close()
    site.gw.stop()
    site.gw.start()
    site.http = httpx.Client(base_url=site.gw.url, headers=site.gw.headers, timeout=120)
    assert site.http.post("/v1/functions/calc-0/invoke", json={"a": 5, "b": 5}).json() == {"add": 10}
    assert site.http.post("/v1/functions/np-sum/invoke", json={"n": 4}).json()["sum"] == 6
    assert site.builds() == []  # this start's log: nothing rebuilt


def test_each_strict_instance_of_a_numpy_function_draws_its_own_random_numbers(site: Site) -> None:
    """numpy's RNG state is copied by fork: a child reseeds it when its template had
    imported numpy.random, and a child that imports it later seeds it itself."""
    eager = "import numpy as np\nimport numpy.random\n\ndef handler(event, context):\n    return int(np.random.randint(1 << 62))\n"
    lazy = "import numpy as np\n\ndef handler(event, context):\n    return int(np.random.randint(1 << 62))\n"
    for name, code in (("rng-eager", eager), ("rng-lazy", lazy)):
        d = function_dir(site.root, name, code, 'packages = ["numpy"]\nlists = ["science"]\npreload = ["numpy"]')
        (d / "spanfaas.toml").write_text((d / "spanfaas.toml").read_text().replace('"reuse"', '"strict"'))
        data = pack_function(d)
        assert site.http.put(f"/v1/functions/{name}", content=data).status_code == 201
        draws = {site.http.post(f"/v1/functions/{name}/invoke", json={}).json() for _ in range(4)}
        assert len(draws) == 4, (name, draws)
