"""Kaggle's Python image as the kernel meets it, and the wheels dataset's dependency closure.

``kaggle_image.txt`` (beside this module) is the image's package list with its source and
date in ``# key: value`` header lines. :func:`unmet` checks what ``pip install --no-index``
in the kernel will check: every ``Requires-Dist`` of every bundled distribution (markers
evaluated for the image's Python and platform) is satisfied, version included, by the
bundle or else by the image. :func:`missing` lists the packages the kernel imports that
neither holds.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Iterable, Mapping

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

IMAGE_FILE = Path(__file__).with_name("kaggle_image.txt")


class ImageError(ValueError):
    """The package list or a wheel's metadata cannot be read."""


@dataclass(frozen=True)
class KaggleImage:
    """The image's packages (canonical name -> version) and its header facts."""

    packages: Mapping[str, Version]
    header: Mapping[str, str] = field(default_factory=dict)

    @property
    def python(self) -> str:
        """``major.minor`` of the image's Python (header ``python:``)."""
        return self.header.get("python", "").split()[0] if self.header.get("python") else ""

    def version(self, name: str) -> Version | None:
        return self.packages.get(canonicalize_name(name))

    def environment(self) -> dict[str, str]:
        """Marker variables of the image (PEP 508), for ``Requirement.marker.evaluate``."""
        python = self.python or "3.12"
        return {"python_version": python, "python_full_version": f"{python}.0",
                "sys_platform": "linux", "platform_system": "Linux",
                "platform_machine": "x86_64", "os_name": "posix",
                "implementation_name": "cpython", "platform_python_implementation": "CPython",
                "platform_release": "", "platform_version": "",
                "implementation_version": f"{python}.0", "extra": ""}


def read_image(path: str | Path = IMAGE_FILE) -> KaggleImage:
    """Parse ``name==version`` lines and ``# key: value`` header lines of ``path``."""
    path = Path(path)
    packages: dict[str, Version] = {}
    header: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].strip().partition(":")
            if sep and key and " " not in key.strip():
                header.setdefault(key.strip(), value.strip())
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ImageError(f"{path} line {number}: not name==version: {line!r}")
        try:
            packages[canonicalize_name(name)] = Version(version)
        except InvalidVersion:
            raise ImageError(f"{path} line {number}: bad version {version!r}") from None
    if not packages:
        raise ImageError(f"{path}: no packages listed")
    return KaggleImage(packages, header)


# --------------------------------------------------------------------------- requirements
@dataclass(frozen=True)
class Distribution:
    """A distribution the bundle ships: name, version and its ``Requires-Dist`` lines."""

    name: str
    version: str
    requires: tuple[str, ...]


def wheel_distribution(wheel: str | Path) -> Distribution:
    """Name, version and ``Requires-Dist`` of a wheel file (its ``METADATA``)."""
    wheel = Path(wheel)
    name, version, _, _ = parse_wheel_filename(wheel.name)
    try:
        with zipfile.ZipFile(wheel) as zf:
            meta = [n for n in zf.namelist()
                    if n.endswith(".dist-info/METADATA") and n.count("/") == 1]
            if len(meta) != 1:
                raise ImageError(f"{wheel}: {len(meta)} .dist-info/METADATA files, expected 1")
            text = zf.read(meta[0]).decode("utf-8", errors="replace")
    except zipfile.BadZipFile:
        raise ImageError(f"{wheel}: not a zip archive (a broken download?)") from None
    requires = HeaderParser().parsestr(text).get_all("Requires-Dist") or []
    return Distribution(str(name), str(version), tuple(requires))


def installed_distribution(name: str) -> Distribution:
    """Name, version and ``Requires-Dist`` of an installed distribution."""
    import importlib.metadata as md

    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        raise ImageError(f"{name} is not installed here") from None
    return Distribution(canonicalize_name(name), dist.version, tuple(dist.requires or []))


def applies(req: Requirement, env: Mapping[str, str]) -> bool:
    """Whether ``req`` applies in the marker environment ``env``
    (:meth:`KaggleImage.environment`)."""
    return req.marker is None or req.marker.evaluate(dict(env))


def unmet(bundle: Iterable[Distribution], image: KaggleImage) -> list[str]:
    """One message per requirement of a bundled distribution that the kernel would not
    meet: the package is neither bundled nor in the image, or its version (the bundle's,
    which replaces the image's, else the image's) is outside the specifier."""
    bundle = list(bundle)
    shipped = {canonicalize_name(d.name): Version(d.version) for d in bundle}
    env = image.environment()
    problems = []
    for dist in bundle:
        for line in dist.requires:
            try:
                req = Requirement(line)
            except InvalidRequirement as exc:
                problems.append(f"{dist.name} {dist.version}: unreadable requirement "
                                f"{line!r} ({exc})")
                continue
            if not applies(req, env):
                continue
            key = canonicalize_name(req.name)
            have, where = shipped.get(key), "the bundle"
            if have is None:
                have, where = image.version(key), "Kaggle's image"
            if have is None:
                problems.append(f"{dist.name} {dist.version} requires {req}: neither "
                                "Kaggle's image nor the bundle has it")
            elif not req.specifier.contains(have, prereleases=True):
                problems.append(f"{dist.name} {dist.version} requires {req}: {where} has "
                                f"{have}")
    return problems


def missing(names: Iterable[str], bundle: Iterable[Distribution],
            image: KaggleImage) -> list[str]:
    """The packages of ``names`` that neither the bundle nor the image holds."""
    shipped = {canonicalize_name(d.name) for d in bundle}
    return [n for n in names
            if canonicalize_name(n) not in shipped and image.version(n) is None]


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        name, sep, version = line.partition("==")
        if sep:
            pins[canonicalize_name(name)] = version.strip()
    return pins


def drift(image: KaggleImage, names: Iterable[str], wheels: str) -> list[str]:
    """Run in the kernel: the packages ``names`` (those the kernel imports) whose installed
    version differs from the one the bundle was checked with (its pin when the wheels list
    ``wheels`` ships it, else the image's), one line each after a summary line."""
    import importlib.metadata as md

    shipped = _pins(wheels)
    lines, same = [], 0
    for name in names:
        key = canonicalize_name(name)
        expected = shipped.get(key) or (str(image.version(key)) if image.version(key)
                                        else "absent")
        try:
            installed = md.version(key)
        except md.PackageNotFoundError:
            installed = "not installed"
        if installed == expected:
            same += 1
        else:
            lines.append(f"  {key}: {installed} here, {expected} when the bundle was checked")
    head = (f"{same} of the {same + len(lines)} packages the stages import are as the "
            "bundle was checked" + (" (Kaggle's image may have moved on):" if lines else ""))
    return [head, *lines]
