"""Container images for the local real node, built without a registry and cached by content hash.

No registry is reachable here, so every image a pod on the real node runs is built on this machine
with buildah (rootful, its own storage under the cache) and exported as a docker-archive:

- ``python-base``: Debian (debootstrap minbase) with python3 and pip. It stands in for the
  registry's ``python:3.11-slim`` so that the project's own ``Dockerfile`` is what gets built.
  It carries the host's CA bundle and pip settings, so ``pip`` inside a build reaches PyPI the way
  the host does. Local only; never pushed anywhere.
- ``operator`` and ``bench``: ``buildah bud --target operator|bench`` of the project's Dockerfile.
- ``standin``: the bench image (it carries TensorFlow) plus ``tools/standin``, installed as
  ``tensorflow_model_server``: the **TF Serving stand-in** (TF Serving's binary is in no registry
  this machine reaches; see tools/standin/README.md).
- ``pause``: a static ``tools/node/pause.go``, containerd's sandbox image.
- ``model-<name>``: busybox-static plus a SavedModel, for ``spec.model.image``.

An image's tag is the hash of everything that goes into it (files, base image, build arguments), so
a warm run rebuilds nothing and a changed file rebuilds exactly what depends on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tools.cluster import ClusterError, cache_root, log
from tools.node.host import mounts_below

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: What the Dockerfile's ``wheels`` stage copies: a change here rebuilds operator and bench.
DOCKERFILE_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "operator")
#: The build recipes themselves: a change to how an image is made rebuilds it.
RECIPE = Path(__file__)
STANDIN_DIR = REPO_ROOT / "tools" / "standin"
PAUSE_SOURCE = Path(__file__).with_name("pause.go")


@dataclass(frozen=True)
class Image:
    name: str
    ref: str  # localhost/pinserve/<name>:<hash>
    archive: Path  # docker-archive holding ref


def _recipe() -> str:
    return hashlib.sha256(RECIPE.read_bytes()).hexdigest()


def images_dir() -> Path:
    return cache_root() / "node" / "images"


def _run(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise ClusterError(f"`{' '.join(args[:4])} ...` failed ({proc.returncode}):\n{tail}")
    return proc.stdout


def content_hash(paths: Iterable[Path], *extra: str, root: Path = REPO_ROOT) -> str:
    """sha256 over the files under ``paths`` (relative names and bytes) and ``extra`` strings."""
    digest = hashlib.sha256()
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        elif path.is_file():
            files.append(path)
    for file in sorted(files):
        name = str(file.relative_to(root)) if file.is_relative_to(root) else str(file)
        digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    for item in extra:
        digest.update(item.encode() + b"\0")
    return digest.hexdigest()[:16]


class Buildah:
    """buildah with its own storage under the cache: nothing lands in /var/lib/containers."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_root() / "node" / "buildah"
        self.driver = os.environ.get("PINSERVE_BUILDAH_DRIVER", "overlay")

    def __call__(self, *args: str, cwd: Path | None = None) -> str:
        if shutil.which("buildah") is None:
            raise ClusterError("buildah is not installed (apt-get install buildah)")
        base = ["buildah", "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
                "--storage-driver", self.driver]
        env = {**os.environ, "BUILDAH_ISOLATION": "chroot", "STORAGE_DRIVER": self.driver}
        return _run([*base, *args], cwd=cwd, env=env)

    def release(self) -> None:
        """Leave no working container and no mount behind (buildah's overlay storage mounts itself)."""
        if not (self.root / "storage").is_dir():
            return
        with contextlib.suppress(ClusterError):
            self("rm", "--all")
        for point in mounts_below(self.root):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)

    def export(self, ref: str, archive: Path) -> None:
        tmp = archive.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        self("push", "--quiet", ref, f"docker-archive:{tmp}:{ref}")
        tmp.rename(archive)
        self.prune(ref, archive)

    def prune(self, ref: str, archive: Path) -> None:
        """Drop older builds of the same image (archives and buildah images): the cache keeps one each."""
        repository = ref.rsplit(":", 1)[0]
        stem = archive.name.rsplit("-", 1)[0]
        for old in archive.parent.glob(f"{stem}-*.tar"):
            if old != archive and old.name.rsplit("-", 1)[0] == stem:
                old.unlink(missing_ok=True)
        listing = self("images", "--noheading", "--format", "{{.Name}}:{{.Tag}}")
        for line in listing.split():
            if line.rsplit(":", 1)[0] == repository and line != ref:
                with contextlib.suppress(ClusterError):
                    self("rmi", line)


def _apt_mirror() -> str:
    """The Debian mirror the host's apt uses (deb822 or one-line sources), else deb.debian.org."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        if not source.is_file():
            continue
        text = source.read_text(errors="replace")
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            uri = match.group(1)
            if "security" not in uri:
                return uri
    return "http://deb.debian.org/debian"


def _pip_conf() -> str:
    """The host's pip settings that decide how PyPI is reached (index, certificate), as a pip.conf."""
    lines = ["[global]", f"cert = {HOST_CA_BUNDLE}"]
    for key, env in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                     ("trusted-host", "PIP_TRUSTED_HOST"), ("default-timeout", "PIP_DEFAULT_TIMEOUT")):
        value = os.environ.get(env)
        if not value:
            proc = subprocess.run(["pip", "config", "get", f"global.{key}"], capture_output=True, text=True,
                                  check=False) if shutil.which("pip") else None
            value = proc.stdout.strip() if proc is not None and proc.returncode == 0 else ""
        if value:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


class ImageBuilder:
    def __init__(self, buildah: Buildah | None = None) -> None:
        self.buildah = buildah or Buildah()
        images_dir().mkdir(parents=True, exist_ok=True)

    def _cached(self, name: str, tag: str) -> tuple[Image, bool]:
        ref = f"localhost/pinserve/{name}:{tag}"
        image = Image(name, ref, images_dir() / f"{name}-{tag}.tar")
        return image, image.archive.is_file()

    def _present(self, ref: str) -> bool:
        try:
            self.buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref)
        except ClusterError:
            return False
        return True

    # -- the images ---------------------------------------------------------------------------------

    def base(self) -> Image:
        pip_conf = _pip_conf()
        ca = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.is_file() else b""
        tag = content_hash([], SUITE, *BASE_PACKAGES, pip_conf, hashlib.sha256(ca).hexdigest(),
                           "base-v1")
        image, cached = self._cached("python-base", tag)
        if cached and self._present(image.ref):
            return image
        if cached:  # archive kept, buildah storage wiped: load it back for the builds on top
            self.buildah("pull", "--quiet", f"docker-archive:{image.archive}")
            return image
        if shutil.which("debootstrap") is None:
            raise ClusterError("debootstrap is not installed (apt-get install debootstrap)")
        mirror = _apt_mirror()
        log(f"image python-base: debootstrap {SUITE} minbase from {mirror} (a few minutes, once)")
        with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
            rootfs = Path(tmp) / "rootfs"
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
                  str(rootfs), mirror])
            self._customise_base(rootfs, pip_conf, ca)
            container = self.buildah("from", "--pull-never", "scratch").strip()
            try:
                mount = Path(self.buildah("mount", container).strip())
                _run(["cp", "-a", f"{rootfs}/.", f"{mount}/"])
                self.buildah("config", "--env", "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                             "--env", "LANG=C.UTF-8", "--cmd", "python3", container)
                self.buildah("commit", "--quiet", container, image.ref)
            finally:
                self.buildah("rm", container)
        self.buildah.export(image.ref, image.archive)
        return image

    @staticmethod
    def _customise_base(rootfs: Path, pip_conf: str, ca: bytes) -> None:
        if ca:
            (rootfs / "etc/ssl/certs/ca-certificates.crt").write_bytes(ca)
        (rootfs / "etc/pip.conf").write_text(pip_conf)
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()  # the image's Python is the build's own, as in python:3.11-slim
        local_bin = rootfs / "usr/local/bin"
        local_bin.mkdir(parents=True, exist_ok=True)
        for name, target in (("python", "/usr/bin/python3"), ("pip", "/usr/bin/pip3")):
            if not (rootfs / "usr/bin" / name).exists():
                (local_bin / name).symlink_to(target)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()

    def dockerfile_target(self, target: str, base: Image) -> Image:
        tag = content_hash([REPO_ROOT / p for p in DOCKERFILE_INPUTS], target, base.ref, _recipe())
        image, cached = self._cached(target, tag)
        if cached:
            return image
        log(f"image {target}: buildah bud --target {target} (the project's Dockerfile, FROM {base.ref})")
        self.buildah("bud", "--quiet", "--layers", "--network", "host", "--pull-never", "--target", target,
                     "--build-arg", f"PYTHON_IMAGE={base.ref}", "-f", str(REPO_ROOT / "Dockerfile"),
                     "-t", image.ref, str(REPO_ROOT))
        self.buildah.export(image.ref, image.archive)
        return image

    def standin(self, bench: Image) -> Image:
        tag = content_hash([STANDIN_DIR], bench.ref, _recipe())
        image, cached = self._cached("tfserving-standin", tag)
        if cached:
            return image
        log("image tfserving-standin: the bench image plus the TF Serving stand-in (tools/standin)")
        if not self._present(bench.ref):
            self.buildah("pull", "--quiet", f"docker-archive:{bench.archive}")
        container = self.buildah("from", "--pull-never", bench.ref).strip()
        try:
            self.buildah("config", "--user", "0:0", container)
            self.buildah("copy", container, str(STANDIN_DIR), "/opt/pinserve-standin")
            self.buildah("run", container, "--", "sh", "-c",
                         "chmod 0755 /opt/pinserve-standin/tensorflow_model_server.py && "
                         "ln -sf /opt/pinserve-standin/tensorflow_model_server.py "
                         "/usr/local/bin/tensorflow_model_server")
            self.buildah("config", "--user", "65532:65532", "--entrypoint", "[]", "--cmd", "tensorflow_model_server",
                         "--label", "io.pinserve.standin=TF Serving stand-in: real TensorFlow, not TF Serving",
                         container)
            self.buildah("commit", "--quiet", container, image.ref)
        finally:
            self.buildah("rm", container)
        self.buildah.export(image.ref, image.archive)
        return image

    def pause(self) -> Image:
        tag = content_hash([PAUSE_SOURCE], _recipe())
        image, cached = self._cached("pause", tag)
        if cached:
            return image
        log("image pause: static build of tools/node/pause.go")
        with tempfile.TemporaryDirectory() as tmp:
            binary = Path(tmp) / "pause"
            env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false", "GO111MODULE": "off"}
            _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), str(PAUSE_SOURCE)], env=env)
            self._from_scratch(image, [(binary, "/pause")], entrypoint='["/pause"]')
        return image

    def model(self, name: str, model_dir: Path) -> Image:
        """busybox-static plus ``model_dir`` at ``/model``: a ``spec.model.image`` source."""
        busybox = Path("/bin/busybox")
        if not busybox.is_file():
            raise ClusterError("busybox-static is not installed (apt-get install busybox-static)")
        tag = content_hash([model_dir], name, hashlib.sha256(busybox.read_bytes()).hexdigest(), _recipe(),
                           root=model_dir)
        image, cached = self._cached(f"model-{name}", tag)
        if cached:
            return image
        log(f"image model-{name}: busybox and the SavedModel in {model_dir}")
        self._from_scratch(image, [(busybox, "/bin/busybox"), (model_dir, "/model")], entrypoint="",
                           links=("sh", "cp", "mkdir", "ls", "cat"))
        return image

    def _from_scratch(self, image: Image, files: list[tuple[Path, str]], *, entrypoint: str,
                      links: tuple[str, ...] = ()) -> None:
        container = self.buildah("from", "--pull-never", "scratch").strip()
        try:
            for src, dest in files:
                self.buildah("copy", container, str(src), dest)
            if links:
                mount = Path(self.buildah("mount", container).strip())
                for link in links:
                    (mount / "bin" / link).symlink_to("busybox")
            if entrypoint:
                self.buildah("config", "--entrypoint", entrypoint, container)
            self.buildah("commit", "--quiet", container, image.ref)
        finally:
            self.buildah("rm", container)
        self.buildah.export(image.ref, image.archive)


def build_node_images(builder: ImageBuilder | None = None) -> dict[str, Image]:
    """Every image the real node's pods use, built or taken from the cache."""
    builder = builder or ImageBuilder()
    try:
        base = builder.base()
        operator = builder.dockerfile_target("operator", base)
        bench = builder.dockerfile_target("bench", base)
        return {"pause": builder.pause(), "operator": operator, "bench": bench, "standin": builder.standin(bench)}
    finally:
        builder.buildah.release()
