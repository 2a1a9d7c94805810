"""Several gateways on one image directory (``[images] dir``), as two image
services in one process, each with its own file descriptors: what one is
deploying, building or running on, the other's ``gc`` and ``rm`` leave alone.
(A real gateway process that dies holding images: tests/integration/test_images_shared.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from images_helpers import ADMIN, built_dirs

from spanfaas.config import ImageSettings, Settings
from spanfaas.errors import Conflict
from spanfaas.images import ImageService
from spanfaas.images.curation import new_list
from spanfaas.model import Bundle, FunctionSpec, ImageRequest
from spanfaas.store import SQLiteStore

pytestmark = pytest.mark.asyncio

TOOLS = ImageRequest(packages=["tinycalc"], lists=["tools"])
SPEC = FunctionSpec(name="calc", image=TOOLS)
BUNDLE = Bundle(digest="a" * 64, path="/x")


def shared(tmp_path: Path, wheelhouse: Path, site: str) -> Settings:
    images = ImageSettings(offline=True, find_links=[str(wheelhouse)], dir=str(tmp_path / "images"))
    return Settings(data_dir=str(tmp_path / site), images=images)


async def test_another_gateways_gc_and_rm_leave_an_image_a_deploy_here_is_using(
    tmp_path: Path, wheelhouse: Path, store: SQLiteStore
) -> None:
    """One store, one image directory, two gateways: a deploy here has its image (found or
    built) but has not stored the version yet; the other gateway sees no function on it."""
    store.create_image_list(new_list("tools", packages=["tinycalc"], by=ADMIN.name), ADMIN)
    here, there = ImageService(shared(tmp_path, wheelhouse, "a"), store), ImageService(shared(tmp_path, wheelhouse, "b"), store)
    try:
        with pytest.raises(RuntimeError, match="refused"):
            async with here.deploying("calc", SPEC, BUNDLE, actor=ADMIN) as b:
                assert b.image is not None
                image_id = b.image.id
                gc = await there.gc(ADMIN)
                assert gc.removed == [] and gc.kept == [image_id]
                with pytest.raises(Conflict, match=f"image {image_id[:12]} is in use by another process sharing"):
                    await there.remove(image_id, ADMIN)
                assert here.repo.has(image_id) and store.get_image(image_id) is not None
                raise RuntimeError("the infrastructure refused the version")
        # the deploy failed and let go of the image: now nothing uses it
        assert (await there.gc(ADMIN)).removed == [image_id]
        assert not here.repo.has(image_id) and built_dirs(here) == []
    finally:
        here.close()
        there.close()


async def test_gc_of_a_gateway_with_its_own_store_leaves_images_functions_run_on_elsewhere(
    tmp_path: Path, wheelhouse: Path
) -> None:
    """Two stores, one image directory: gateway B's store knows nothing of A's images,
    which B's gc used to take as leftovers while A's functions ran on them."""
    stores = [SQLiteStore(tmp_path / site / "spanfaas.db") for site in ("a", "b")]
    a, b = (ImageService(shared(tmp_path, wheelhouse, site), s) for site, s in zip(("a", "b"), stores, strict=True))
    try:
        stores[0].create_image_list(new_list("tools", packages=["tinycalc"], by=ADMIN.name), ADMIN)
        async with a.deploying("calc", SPEC, BUNDLE, actor=ADMIN) as bundle:
            stores[0].put_function("calc", BUNDLE.digest, SPEC)
        assert bundle.image is not None
        image_id = bundle.image.id
        assert stores[1].get_image(image_id) is None
        gc = await b.gc(ADMIN)
        assert gc.removed == [] and gc.kept == [image_id] and a.repo.has(image_id)

        a.forget("calc")  # A removed the function (the registry tells the image service)
        gc = await b.gc(ADMIN)
        assert gc.removed == [image_id] and not a.repo.has(image_id)
        # A's record of it outlives the directory; a deploy there builds it again
        async with a.deploying("calc", SPEC, BUNDLE, actor=ADMIN) as again:
            assert again.image is not None and again.image.id == image_id and a.repo.has(image_id)
        assert a.builds == 2
    finally:
        a.close()
        b.close()
        for s in stores:
            s.close()


async def test_a_use_that_comes_during_a_removal_waits_it_out_then_builds_the_image_again(
    tmp_path: Path, wheelhouse: Path, store: SQLiteStore
) -> None:
    store.create_image_list(new_list("tools", packages=["tinycalc"], by=ADMIN.name), ADMIN)
    here, there = ImageService(shared(tmp_path, wheelhouse, "a"), store), ImageService(shared(tmp_path, wheelhouse, "b"), store)
    try:
        record, _ = await here.ensure(TOOLS, ADMIN)
        with there._leases.removal(record.id) as free:
            assert free
            task = asyncio.create_task(here.ensure(TOOLS, ADMIN))
            await asyncio.sleep(0.3)  # it resolves, then waits for the lease
            assert not task.done()
            store.delete_image(record.id, ADMIN)
            assert there.repo.remove(record.id)
        again, built = await task
        assert built and again.id == record.id and here.repo.has(record.id) and here.builds == 2
    finally:
        here.close()
        there.close()


async def test_an_image_a_gateway_still_runs_a_replaced_version_on_is_kept_until_it_lets_go(
    tmp_path: Path, wheelhouse: Path, store: SQLiteStore
) -> None:
    """One store: gateway B deploys a new version of calc on another image.  The store
    says the old image is unused, but gateway A still runs the old version on it."""
    store.create_image_list(new_list("tools", packages=["tinycalc", "tinyhelper"], by=ADMIN.name), ADMIN)
    a, b = ImageService(shared(tmp_path, wheelhouse, "a"), store), ImageService(shared(tmp_path, wheelhouse, "b"), store)
    try:
        async with a.deploying("calc", SPEC, BUNDLE, actor=ADMIN) as v1:
            store.put_function("calc", BUNDLE.digest, SPEC)
        v2_spec = FunctionSpec(name="calc", image=ImageRequest(packages=["tinycalc==1.0"], lists=["tools"]))
        v2_bundle = Bundle(digest="b" * 64, path="/x")
        async with b.deploying("calc", v2_spec, v2_bundle, actor=ADMIN) as v2:
            store.put_function("calc", v2_bundle.digest, v2_spec)
        assert v1.image is not None and v2.image is not None and v1.image.id != v2.image.id
        old, new = v1.image.id, v2.image.id
        assert store.image_users() == {new: ["calc"]}

        gc = await b.gc(ADMIN)
        assert gc.removed == [] and sorted(gc.kept) == sorted([old, new]) and a.repo.has(old)
        with pytest.raises(Conflict, match="in use by another process sharing"):
            await b.remove(old, ADMIN)
        with pytest.raises(Conflict, match="in use by calc on this gateway, which still runs a version"):
            await a.remove(old, ADMIN)

        a.forget("calc")  # A catches up (here: lets go, as a removal or a redeploy through A would)
        assert (await b.gc(ADMIN)).removed == [old] and not a.repo.has(old) and b.repo.has(new)
    finally:
        a.close()
        b.close()


async def test_of_two_gateways_building_one_image_at_once_only_the_builder_says_it_built_it(
    tmp_path: Path, wheelhouse: Path, store: SQLiteStore
) -> None:
    """The one that waited on the image's file lock while the other built it found the image,
    and still said it had built it (``built: true``)."""
    store.create_image_list(new_list("tools", packages=["tinycalc"], by=ADMIN.name), ADMIN)
    here, there = ImageService(shared(tmp_path, wheelhouse, "a"), store), ImageService(shared(tmp_path, wheelhouse, "b"), store)
    try:
        (a, built_a), (b, built_b) = await asyncio.gather(here.ensure(TOOLS, ADMIN), there.ensure(TOOLS, ADMIN))
        assert a.id == b.id and here.builds + there.builds == 1
        assert sorted([built_a, built_b]) == [False, True]
        assert (built_a, built_b) == (here.builds == 1, there.builds == 1)  # the one that built it says so
    finally:
        here.close()
        there.close()
