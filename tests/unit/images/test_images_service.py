"""The image service with real uv on tiny wheels (offline, from a wheelhouse the
tests write): builds once, reuses, fails cleanly, applies the policy."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
from images_helpers import ADMIN, built_dirs

from spanfaas.config import ImageSettings, Settings
from spanfaas.errors import Conflict, ImageBuildFailed, ImageRejected, InfraError, InvalidManifest, InvalidRequest, NotFound, SpanfaasError
from spanfaas.images import ImageService
from spanfaas.images.curation import approved_package, new_list
from spanfaas.images.views import BuildDone, BuildFailed, BuildLine, BuildPhase
from spanfaas.model import Bundle, FunctionSpec, ImageRequest
from spanfaas.store import SQLiteStore
from spanfaas.store.images import ImagePolicy

pytestmark = pytest.mark.asyncio

TOOLS = ImageRequest(packages=["tinycalc"], lists=["tools"])


def run_in_image(service: ImageService, image_id: str, code: str) -> str:
    """Python with only the image's packages added, as a function's template sees them."""
    env = {"PYTHONPATH": str(service.repo.site_packages(image_id)), "PATH": os.environ["PATH"]}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


async def test_a_request_builds_an_image_once_then_reuses_it(service: ImageService) -> None:
    events: list[object] = []
    record, built = await service.ensure(TOOLS, ADMIN, events.append)
    assert built and service.builds == 1
    # the newest approved version (the lists allow <3), with its dependency recorded
    assert [(p.name, p.version, p.direct, p.via) for p in record.packages] == [
        ("tinycalc", "2.0", True, []),
        ("tinyhelper", "1.5", False, ["tinycalc"]),
    ]
    assert record.built_by == "alice" and record.size > 0 and "tinycalc==2.0" in record.lock
    phases = [e.phase for e in events if isinstance(e, BuildPhase)]
    assert phases == ["check", "resolve", "install", "publish"]
    # 'installing tinycalc==2.0 + 1 dependencies': one is in the singular
    assert [e.message for e in events if isinstance(e, BuildPhase) and e.phase == "install"] == ["installing tinycalc==2.0 + 1 dependency"]
    assert any(isinstance(e, BuildLine) and "tinycalc==2.0" in e.line for e in events)
    assert run_in_image(service, record.id, "import tinycalc; print(tinycalc.add(2, 3), tinycalc.VERSION)") == "5 2.0"
    assert (service.repo.path(record.id) / "build.log").read_text().count("tinycalc") >= 1
    # compiled at build time: functions cannot write bytecode into the (read-only) image
    assert list((service.repo.site_packages(record.id) / "tinycalc" / "__pycache__").glob("__init__.*.pyc"))

    # a build only is no use of the image; its first deploy is the first, the next a reuse
    again, built = await service.ensure(ImageRequest(packages=["TinyCalc>=1.5"], lists=["tools"]), ADMIN)
    assert not built and again.id == record.id and service.builds == 1 and service.reuses == 0
    for reuses in (0, 1):
        again, built = await service.ensure(ImageRequest(packages=["TinyCalc>=1.5"], lists=["tools"]), ADMIN, deploy=True)
        assert not built and again.id == record.id and service.reuses == reuses
        assert service.store.get_image(record.id).reuses == reuses  # type: ignore[union-attr]
    assert built_dirs(service) == [record.id]


async def test_concurrent_requests_for_one_new_image_build_it_once(service: ImageService) -> None:
    results = await asyncio.gather(*(service.ensure(TOOLS, ADMIN) for _ in range(4)))
    assert len({r.id for r, _ in results}) == 1
    assert service.builds == 1
    # built for one of them; the others followed its build (they said built too)
    assert sorted(built for _, built in results) == [False, False, False, True], results
    assert built_dirs(service) == [results[0][0].id]


async def test_a_local_build_is_approved_by_its_public_version_and_built(service: ImageService) -> None:
    # the list approves the public version, spelled another way; the request pins the local build
    service.store.put_approved_package("tools", approved_package("Tiny.Local==1.0", by=ADMIN.name), ADMIN)
    record, built = await service.ensure(ImageRequest(packages=["tiny-local==1.0+cpu"], lists=["tools"]), ADMIN)
    assert built and [(p.name, p.version, p.direct) for p in record.packages] == [("tiny-local", "1.0+cpu", True)]
    assert run_in_image(service, record.id, "import tiny_local; print(tiny_local.__version__)") == "1.0+cpu"
    again, built = await service.ensure(ImageRequest(packages=["TINY_LOCAL"], lists=["tools"]), ADMIN)
    assert not built and again.id == record.id


async def test_a_rejected_request_builds_nothing(service: ImageService) -> None:
    with pytest.raises(ImageRejected, match=r"tinycalc>=3 is outside the approved range: tinycalc>=1,<3 \(list tools\)"):
        await service.ensure(ImageRequest(packages=["tinycalc>=3"], lists=["tools"]), ADMIN)
    with pytest.raises(ImageRejected, match="lonely is not approved by the selected lists"):
        await service.ensure(ImageRequest(packages=["lonely"], lists=["tools"]), ADMIN)
    assert service.builds == 0 and built_dirs(service) == [] and service.store.list_images() == []


async def test_a_failed_resolution_gives_the_resolvers_message_and_leaves_nothing(service: ImageService) -> None:
    # approved, and in range, but no such version in the wheelhouse
    with pytest.raises(ImageBuildFailed) as info:
        await service.ensure(ImageRequest(packages=["tinyhelper>=9"], lists=["tools"]), ADMIN)
    assert "No solution found" in info.value.message and "tinyhelper" in info.value.message
    assert built_dirs(service) == [] and service.store.list_images() == []


async def test_a_failed_install_leaves_nothing_half_made(service: ImageService, wheelhouse: Path, tmp_path: Path) -> None:
    record, _ = await service.ensure(TOOLS, ADMIN)
    service.repo.remove(record.id)
    service.store.delete_image(record.id, ADMIN)
    # the lock pins tinycalc 2.0 by hash; a wheelhouse without it cannot install it
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    broken = ImageService(
        Settings(data_dir=service.settings.data_dir, images=ImageSettings(offline=True, find_links=[str(empty)])), service.store
    )
    with pytest.raises(ImageBuildFailed, match="uv could not"):
        await broken._build_once(record.id, record.python, record.lock, record.packages, record.request, ADMIN, lambda e: None)
    assert built_dirs(broken) == [] and not broken.repo.has(record.id)


async def test_a_build_past_its_timeout_is_the_platforms_failure_not_the_requests(service: ImageService) -> None:
    """uv stopped at ``[images] build_timeout``: a 504 (exit 7) that says what ran out of
    time and what to do, never the 400 of a request that cannot be met."""
    record, _ = await service.ensure(TOOLS, ADMIN)  # a lock to install, from a build that had time
    service.repo.remove(record.id)
    service.store.delete_image(record.id, ADMIN)
    hasty = ImageService(
        Settings(data_dir=service.settings.data_dir, images=msgspec.structs.replace(service.settings.images, build_timeout=0.001)),
        service.store,
    )
    attempts: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("resolve", lambda: hasty.ensure(ImageRequest(packages=["tinycalc<2"], lists=["tools"]), ADMIN)),
        ("install", lambda: hasty._build_once(record.id, record.python, record.lock, record.packages, record.request, ADMIN, lambda e: None)),
    ]
    for phase, attempt in attempts:
        with pytest.raises(SpanfaasError) as info:
            await attempt()
        exc = info.value
        assert isinstance(exc, InfraError) and not isinstance(exc, ImageBuildFailed), type(exc)
        assert (exc.status, exc.exit_code, exc.slug) == (504, 7, "image-build-timeout")
        assert f"uv {phase} did not finish within 0.001 s" in exc.message and "[images] build_timeout" in exc.message
        assert exc.extra == {"phase": phase, "timeout": 0.001}
    assert built_dirs(hasty) == [] and not hasty.repo.has(record.id)
    events = [e async for e in hasty.stream(ImageRequest(packages=["tinycalc<2"], lists=["tools"]), ADMIN)]
    assert isinstance(events[-1], BuildFailed) and events[-1].problem["status"] == 504
    assert hasty.metrics.failures.labels("timeout")._value.get() == 2  # the stream, and the ensure above


async def test_dependencies_must_be_approved_when_the_policy_says_so(service: ImageService) -> None:
    service.store.remove_approved_package("tools", "tinyhelper", ADMIN)
    await service.ensure(TOOLS, ADMIN)  # recorded, not checked
    service.store.set_image_policy(ImagePolicy(require_transitive=True), ADMIN)
    other = ImageRequest(packages=["tinycalc<3"], lists=["tools"])
    with pytest.raises(ImageRejected, match=r"tinyhelper==1.5 \(needed by tinycalc\) is a dependency not approved"):
        await service.ensure(other, ADMIN)
    assert service.builds == 1


async def test_deploy_hooks_record_the_image_and_pin_it_and_restart_survives_list_changes(service: ImageService) -> None:
    spec = FunctionSpec(name="calc", image=ImageRequest(packages=["tinycalc"], lists=["tools"], preload=["tinycalc", "json"]))
    bundle = Bundle(digest="d" * 64, path="/nowhere")
    async with service.deploying("calc", spec, bundle, actor=ADMIN) as deployed:
        assert deployed.image is not None and deployed.image.preload == ["tinycalc", "json"]
        image_id = deployed.image.paths[0].split("/")[-2]
        assert deployed.image.id.startswith(image_id + "-")  # its own zygote for this preload list
        with pytest.raises(Conflict, match="being deployed"):
            await service.remove(image_id, ADMIN)
        service.store.put_function("calc", bundle.digest, spec)
    assert (await service.views())[0].used_by == ["calc"]
    with pytest.raises(Conflict, match="in use by calc"):
        await service.remove(image_id, ADMIN)

    # the package is withdrawn: new requests are rejected, the deployed version keeps its image,
    # even when its directory is gone (it is rebuilt from the lock, without asking the lists)
    service.store.remove_approved_package("tools", "tinycalc", ADMIN)
    with pytest.raises(ImageRejected):
        await service.ensure(spec.image, ADMIN)  # type: ignore[arg-type]
    service.repo.remove(image_id)
    attached = await service.attach("calc", spec, bundle)
    assert attached.image is not None and service.repo.has(image_id) and service.builds == 2

    gc = await service.gc(ADMIN)
    assert gc.removed == [] and gc.kept == [image_id]
    service.store.delete_function("calc")
    assert (await service.gc(ADMIN)).kept == [image_id]  # it still runs here
    service.forget("calc")  # as the registry does when it removes the function
    gc = await service.gc(ADMIN)
    assert gc.removed == [image_id] and gc.freed > 0 and built_dirs(service) == []
    assert [e.action for e in service.store.image_audit(image_id)] == ["image.gc"]


async def test_preload_must_name_modules_of_the_image(service: ImageService) -> None:
    spec = FunctionSpec(name="calc", image=ImageRequest(packages=["tinycalc"], lists=["tools"], preload=["numpy"]))
    with pytest.raises(InvalidManifest, match="preload names numpy, which the image does not contain"):
        async with service.deploying("calc", spec, Bundle(digest="e" * 64, path="/x"), actor=ADMIN):
            pass


async def test_a_stream_ends_with_done_or_the_problem(service: ImageService) -> None:
    events = [e async for e in service.stream(TOOLS, ADMIN)]
    assert isinstance(events[-1], BuildDone) and events[-1].built and events[-1].image.packages[0].name == "tinycalc"
    events = [e async for e in service.stream(TOOLS, ADMIN)]
    assert isinstance(events[-1], BuildDone) and not events[-1].built
    events = [e async for e in service.stream(ImageRequest(packages=["tinyhelper>=9"], lists=["tools"]), ADMIN)]
    assert isinstance(events[-1], BuildFailed) and events[-1].problem["type"].endswith("/image-build-failed")


async def test_stale_build_directories_are_cleaned_at_start(settings: Settings, store: SQLiteStore) -> None:
    service = ImageService(settings, store)
    stale = service.repo.root / ".tmp-999999999-abcd"
    (stale / "site-packages").mkdir(parents=True)
    await service.start()
    assert not stale.exists()


async def test_gc_never_takes_an_image_a_deploy_is_using(service: ImageService) -> None:
    spec = FunctionSpec(name="calc", image=TOOLS)
    bundle = Bundle(digest="f" * 64, path="/x")
    deployed = asyncio.Event()

    async def deploy() -> str:
        async with service.deploying("calc", spec, bundle, actor=ADMIN) as b:
            deployed.set()
            await asyncio.sleep(0.1)  # the infrastructure starts the function
            service.store.put_function("calc", bundle.digest, spec)
            assert b.image is not None
            return b.image.id

    task = asyncio.create_task(deploy())
    await asyncio.sleep(0.001)  # the deploy is resolving or building when gc comes
    result = await service.gc(ADMIN)
    image_id = await task
    assert deployed.is_set() and result.removed == [] and service.repo.has(image_id)
    assert (await service.gc(ADMIN)).kept == [image_id]


async def test_a_failed_redeploy_of_the_same_bundle_keeps_the_running_versions_image(service: ImageService) -> None:
    spec = FunctionSpec(name="calc", image=TOOLS)
    bundle = Bundle(digest="c" * 64, path="/x")
    async with service.deploying("calc", spec, bundle, actor=ADMIN) as b:
        service.store.put_function("calc", bundle.digest, spec)
    assert b.image is not None
    running = b.image.id
    # the same bundle again, now resolved to another image; the infrastructure refuses it
    service.store.put_approved_package("tools", approved_package("tinycalc==1.0", by=ADMIN.name), ADMIN)
    with pytest.raises(RuntimeError, match="infrastructure refused"):
        async with service.deploying("calc", spec, bundle, actor=ADMIN) as again:
            assert again.image is not None and again.image.id != running
            raise RuntimeError("infrastructure refused the version")
    # the stored version still runs on its image: it is in use, and a restart attaches it
    assert service.store.image_for("calc", bundle.digest) == running
    with pytest.raises(Conflict, match="in use by calc"):
        await service.remove(running, ADMIN)
    assert running in (await service.gc(ADMIN)).kept and service.repo.has(running)


async def test_a_relative_image_directory_builds_images_a_function_can_import_from(
    wheelhouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir="data", images=ImageSettings(offline=True, find_links=[str(wheelhouse)], dir="images"))
    store = SQLiteStore(tmp_path / "spanfaas.db")
    try:
        store.create_image_list(new_list("tools", packages=["tinycalc"], by=ADMIN.name), ADMIN)
        service = ImageService(settings, store)
        record, _ = await service.ensure(TOOLS, ADMIN)
        ref = service.ref(record, [])
        # the runtime starts the image's zygote in another directory (cwd "/")
        env = {"PYTHONPATH": os.pathsep.join(ref.paths), "PATH": os.environ["PATH"]}
        out = subprocess.run([sys.executable, "-c", "import tinycalc; print(tinycalc.VERSION)"], env=env, cwd="/",
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        assert out == "2.0"
    finally:
        store.close()


async def test_an_image_id_prefix_under_six_digits_is_called_too_short_not_missing(service: ImageService) -> None:
    """`spanfaas images show 1975` (the first digits of an image in `images ls`) was told
    "image '1975' not found", though the image is there: prefixes need 6 digits."""
    record, _ = await service.ensure(TOOLS, ADMIN)
    with pytest.raises(InvalidRequest, match=f"too short.*at least 6.*{record.id[:12]}"):
        service.resolve_id(record.id[:4])
    assert service.resolve_id(record.id[:6]) == record.id
    with pytest.raises(NotFound, match="not found"):
        service.resolve_id("zz")


async def test_an_image_id_in_capitals_is_that_image(service: ImageService) -> None:
    """An id (or prefix) in capital hex digits, as some tools copy hashes, was 'not found'."""
    record, _ = await service.ensure(TOOLS, ADMIN)
    assert service.resolve_id(record.id[:12].upper()) == record.id
    assert service.resolve_id(record.id.upper()) == record.id
