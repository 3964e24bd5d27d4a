"""Hot reload of the model bundle: watch, load and validate in the background, swap between batches.

The worker keeps serving its current `BundleRuntime` the whole time. A new bundle (the watched path's
target changed, or `request_reload()` from the control topic) is loaded on a background thread, checked
on the golden set shipped inside it and handed over by `take_ready()`, which the worker calls between
batches. A bundle that fails any check is logged and dropped; the old one keeps serving.

    watcher = BundleWatcher(settings.bundle_path, providers="auto", current=runtime).start()
    ...  # between batches:
    if (new := watcher.take_ready()) is not None:
        runtime = new  # runtime.version (the de-duplication key's model part) changes with it

Fleet rollouts (consumer/worker/fleet.py) pass a `tag` to request_reload() and get it back in the on_ready /
on_rejected / on_swapped callbacks, to report which revision each worker validated, refused or swapped in.

The watched path changes only when a requested bundle passed every check (manifest sha256s, the announced
version and fingerprint, the golden set): a request naming a missing or bad bundle leaves the watcher on the
path it had, which keeps reloading as before.
"""

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from consumer.core.bundle import MANIFEST, ModelBundle
from consumer.core.runtime import BundleRuntime
from consumer.errors import BundleError, MemeguardError
from consumer.worker.serving_model import RuntimeOptions

log = logging.getLogger(__name__)


def bundle_key(path: Path) -> str | None:
    """Cheap identity of what `path` points at now: target, manifest bytes, size+mtime of listed files.

    Including the files' stats means a bundle copied in place file by file (manifest first) is retried
    once the copy completes instead of staying rejected. None when there is no manifest (yet).
    """
    try:
        root = path.resolve()
        manifest_bytes = (root / MANIFEST).read_bytes()
    except (OSError, ValueError):  # missing, unreadable, or no path at all (a NUL byte in a command's path)
        return None
    digest = hashlib.sha256(os.fsencode(root) + b"\0" + manifest_bytes)  # any file name, UTF-8 or not
    try:
        manifest = ModelBundle.load(root, verify=False).manifest
        for f in manifest.files:
            st = (root / f.path).stat()
            digest.update(f"{f.path}:{st.st_size}:{st.st_mtime_ns}".encode())
    except (BundleError, OSError, ValueError):
        digest.update(b"incomplete")
    return digest.hexdigest()


def validate_runtime(runtime: BundleRuntime, compare_recorded: bool = True, atol: float | None = None) -> int:
    """Run the bundle's golden set; raise BundleError unless outputs are finite (and match, if asked).

    Returns how many golden memes were checked. A bundle without a golden set gets a blank-meme call.
    """
    records = runtime.bundle.golden_records()
    if not records:
        log.warning("bundle %s ships no golden set; only checking that it runs", runtime.version)
        pred = runtime.predict([Image.new("RGB", (64, 64))], ["golden set missing"])
        if not np.isfinite(pred.technique_probs).all():
            raise BundleError(f"Bundle {runtime.bundle.root} produces non-finite outputs.")
        return 0
    images = []
    for r in records:
        try:
            with Image.open(r.image_path) as im:
                images.append(im.convert("RGB"))
        except OSError as e:
            raise BundleError(
                f"Bundle {runtime.bundle.root}: golden image {r.image_path} is unreadable: {e}"
            ) from e
    pred = runtime.predict(images, [r.text for r in records])
    outputs = [pred.technique_probs] + ([pred.harmful_probs] if pred.harmful_probs is not None else [])
    if not all(np.isfinite(o).all() for o in outputs):
        raise BundleError(f"Bundle {runtime.bundle.root} produces non-finite outputs on its golden set.")
    if compare_recorded:
        golden = runtime.manifest.golden
        tol = atol if atol is not None else (golden.atol if golden is not None else 1e-3)
        recorded = np.asarray([r.technique_probs for r in records], dtype=np.float32)
        diff = float(np.abs(recorded - pred.technique_probs).max())
        if pred.harmful_probs is not None and all(r.harmful_prob is not None for r in records):
            harmful = np.asarray([r.harmful_prob for r in records], dtype=np.float32)
            diff = max(diff, float(np.abs(harmful - pred.harmful_probs).max()))
        if diff > tol:
            raise BundleError(
                f"Bundle {runtime.bundle.root} disagrees with its recorded golden outputs on "
                f"{runtime.provider}: max |diff| {diff:.2e} > {tol:.0e}. Re-export it or raise the tolerance."
            )
    return len(records)


@dataclass(frozen=True)
class ReloadStatus:
    serving_key: str | None
    loading: bool
    loaded: int
    rejected: int
    last_error: str | None


class BundleWatcher:
    """Watches a bundle path (a directory, or a symlink re-pointed at new versions) and reloads it."""

    def __init__(
        self,
        path: Path | str,
        providers: str = "auto",
        *,
        current: BundleRuntime | None = None,
        intra_op_threads: int = 0,
        max_batch: int | None = None,
        poll_interval_s: float = 2.0,
        compare_recorded: bool = True,
        atol: float | None = None,
        on_ready: Callable[[BundleRuntime, Any], None] | None = None,
        on_rejected: Callable[[str, Any], None] | None = None,
        on_swapped: Callable[[BundleRuntime, Any], None] | None = None,
        options: RuntimeOptions | None = None,
    ) -> None:
        """`options` (the worker's: RuntimeOptions.of(settings)) builds every reloaded runtime as the serving
        one was built; without it, `providers`, `intra_op_threads`, `max_batch` and the serving runtime's
        engine cache."""
        self.path = Path(path)
        # Optional callbacks with the `tag` of request_reload (the fleet's rollout command): validated, refused,
        # handed over by take_ready(). Called on the loader thread (the first two) or the caller's (the last).
        self.on_ready, self.on_rejected, self.on_swapped = on_ready, on_rejected, on_swapped
        # Reloaded bundles build their TensorRT engines where the serving one does (MEMEGUARD_TRT_ENGINE_CACHE_DIR).
        self.options = options or RuntimeOptions(providers, intra_op_threads, max_batch,
                                                 current.engine_cache_root if current is not None else None)
        self.poll_interval_s = poll_interval_s
        self.compare_recorded = compare_recorded
        self.atol = atol
        self._cond = threading.Condition()
        self._pending: Path | None = None
        self._pending_tag: Any = None
        self._pending_expect: str | None = None
        self._pending_sha256: str | None = None
        self._loading = False
        self._loading_key: str | None = None
        self._ready: tuple[BundleRuntime, Any] | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loaded = self._rejected = 0
        self._last_error: str | None = None
        self._rejected_key: str | None = None
        # What is serving now; a watched path that already points elsewhere gets loaded at start.
        here = bundle_key(self.path)
        same = current is not None and current.bundle.root == self.path.resolve()
        self._serving_key = here if same else None

    # --- control --------------------------------------------------------------------------------
    def start(self) -> "BundleWatcher":
        for target, name in ((self._load_loop, "bundle-loader"), (self._poll_loop, "bundle-poller")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def request_reload(self, path: Path | str | None = None, *, tag: Any = None,
                       expect_version: str | None = None, expect_sha256: str | None = None) -> None:
        """Load `path` (and watch it from then on), or the watched path again, even if unchanged.

        The watched path changes only once the bundle passed its checks, so a refused request (a rollout, a
        `reload` naming any path) leaves the watcher on the bundle that serves, still polling its path.
        `expect_version` refuses a bundle whose `BundleRuntime.version` is not the announced one, and
        `expect_sha256` one whose manifest fingerprint (`ModelBundle.fingerprint`) is not the announced one
        (another bundle copied to the announced path)."""
        with self._cond:
            self._pending = Path(path) if path is not None else self.path
            self._pending_tag, self._pending_expect, self._pending_sha256 = tag, expect_version, expect_sha256
            self._rejected_key = None  # an explicit request retries a bundle rejected before
            self._cond.notify_all()

    def take_ready(self) -> BundleRuntime | None:
        """The validated new runtime, once; None when there is nothing new. Call it between batches."""
        with self._cond:
            ready, self._ready = self._ready, None
        if ready is None:
            return None
        runtime, tag = ready
        if self.on_swapped is not None:
            try:
                self.on_swapped(runtime, tag)
            except Exception:  # reporting must never stop the swap
                log.exception("bundle watcher: the swap callback failed")
        return runtime

    def poll_once(self) -> bool:
        """Compare the watched path with what serves; queue a load if it changed. True when queued."""
        key = bundle_key(self.path)
        with self._cond:
            if key is None or key in (self._serving_key, self._rejected_key) or self._pending is not None:
                return False
            if self._loading and key == self._loading_key:
                return False
            self._pending = self.path
            self._cond.notify_all()
            return True

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until nothing is queued or loading (tests, shutdown). False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._loading, timeout)

    @property
    def status(self) -> ReloadStatus:
        with self._cond:
            return ReloadStatus(self._serving_key, self._loading or self._pending is not None,
                                self._loaded, self._rejected, self._last_error)

    # --- background threads --------------------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.poll_once()
            except Exception:  # a poller that dies silently would stop reloads for good
                log.exception("bundle watcher: polling %s failed; will retry", self.path)

    def _load_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._stop.is_set())
                if self._stop.is_set():
                    return
                path, self._pending = self._pending, None
                tag, expect, sha256 = self._pending_tag, self._pending_expect, self._pending_sha256
                self._pending_tag = self._pending_expect = self._pending_sha256 = None
                self._loading = True
                self._loading_key = key = bundle_key(path)
            try:
                runtime = self._load(path, expect, sha256)
            except Exception as e:  # anything wrong with a new bundle must never stop serving
                msg = str(e) if isinstance(e, MemeguardError) else f"{type(e).__name__}: {e}"
                log.error("bundle reload rejected, the current model keeps serving: %s", msg)
                with self._cond:
                    self._rejected += 1
                    self._last_error = msg
                    if path == self.path:  # not retried by polling; a refused request elsewhere blocks nothing
                        self._rejected_key = key
                self._notify(self.on_rejected, msg, tag)
                continue
            with self._cond:
                self._ready = (runtime, tag)  # an untaken older one is simply replaced
                self._serving_key = key
                self.path = path  # only a bundle that passed: watch its path from now on
                self._loaded += 1
                self._last_error = None
            self._notify(self.on_ready, runtime, tag)
            log.info("bundle reload: %s validated on %s, ready to swap in", runtime.version, runtime.provider)

    def _notify(self, callback: Callable[[Any, Any], None] | None, what: Any, tag: Any) -> None:
        """Run a callback, then end the load: whoever waits in wait_idle() sees the outcome already reported."""
        try:
            if callback is not None:
                callback(what, tag)
        except Exception:
            log.exception("bundle watcher: a status callback failed")
        with self._cond:
            self._loading = False
            self._cond.notify_all()

    def _load(self, path: Path, expect_version: str | None = None, expect_sha256: str | None = None) -> BundleRuntime:
        runtime = self.options.load(path)
        if expect_version is not None and runtime.version != expect_version:
            raise BundleError(f"Bundle {path} is model {runtime.version}, not the announced {expect_version}.")
        if expect_sha256 is not None and runtime.bundle.fingerprint != expect_sha256:
            raise BundleError(f"Bundle {path} has fingerprint {runtime.bundle.fingerprint[:12]}…, not the announced "
                              f"{expect_sha256[:12]}….")
        checked = validate_runtime(runtime, self.compare_recorded, self.atol)
        log.info("bundle %s passed its golden set (%d memes)", runtime.version, checked)
        return runtime
