"""The browser assets of the API's docs pages (Swagger UI, ReDoc, GraphiQL), from the npm registry.

The pages load these scripts and styles from the API itself (api/docs.py), never from a public CDN:
a deployment should not depend on third parties, and a machine without internet can still use them.
Each package is fetched once with npm (``npm pack``, which checks the registry's integrity for the
tarball), checked again here against the sha512 pinned below, and the files the pages need are
unpacked into ``<cache>/web-assets/<name>@<version>/`` (cache: $PIPELINE_CACHE_DIR or
~/.cache/pipeline-gateway, as for the Kafka jars). A package is unpacked into a temporary directory
renamed into place once complete, so an interrupted fetch is never taken for a finished one.

Run ``python -m infra.provision.web_assets`` (``make web-assets``; ``make run`` and ``make test`` do it).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MARKER = ".complete"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # the registry's dist.integrity (sha512) of the tarball
    files: tuple[str, ...]  # paths inside the package that the pages load

    @property
    def directory(self) -> str:
        return f"{self.name}@{self.version}"


# GraphiQL 3.x is the last line with a browser (UMD) build, and it wants React 18.
PACKAGES = (
    Package(
        "swagger-ui-dist",
        "5.18.2",  # litestar 2.25's default
        "sha512-J+y4mCw/zXh1FOj5wGJvnAajq6XgHOyywsa9yITmwxIlJbMqITq3gYRZHaeqLVH/eV/HOPphE6NjF+nbSNC5Zw==",
        ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"),
    ),
    Package(
        "redoc",
        "2.5.1",
        "sha512-LmqA+4A3CmhTllGG197F0arUpmChukAj9klfSdxNRemT9Hr07xXr7OGKu4PHzBs359sgrJ+4JwmOlM7nxLPGMg==",
        ("bundles/redoc.standalone.js",),
    ),
    Package(
        "graphiql",
        "3.8.3",
        "sha512-cuPDYtXVKV86Pu5PHBX642Odi/uVEE2y1Jxq5rGO/Qy1G2lRp7ZZ7a/T30RzxhuLSWo9zUbzq0P3U49//H0Ugw==",
        ("graphiql.min.js", "graphiql.min.css"),
    ),
    Package(
        "react",
        "18.2.0",
        "sha512-/3IjMdb2L9QbBdWiW5e3P2/npwMBaU9mHCSCUzNln0ZCYbcfTsGbTJrU/kGemdH2IWmB2ioZ+zkxtmq6g09fGQ==",
        ("umd/react.production.min.js",),
    ),
    Package(
        "react-dom",
        "18.2.0",
        "sha512-6IMTriUmvsjHUjNtEDudZfuDQUoWXVxKHhlEGSk81n4YFS+r/Kl99wXiwlVXtPBtJenozv2P+hxDsw9eA7Xo6g==",
        ("umd/react-dom.production.min.js",),
    ),
)
BY_NAME = {package.name: package for package in PACKAGES}
FETCH_COMMAND = "make web-assets"  # what a page without its assets tells the reader to run


def cache_root() -> Path:
    """Where downloads are kept: $PIPELINE_CACHE_DIR or ~/.cache/pipeline-gateway."""
    return Path(os.environ.get("PIPELINE_CACHE_DIR") or Path.home() / ".cache" / "pipeline-gateway")


def assets_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or cache_root()) / "web-assets"


def asset_path(name: str, file: str) -> str:
    """A file's path under the assets directory (and under the URL the API serves it at)."""
    return f"{BY_NAME[name].directory}/{file}"


def missing(root: Path) -> list[Package]:
    """The packages not (completely) fetched into ``root``."""
    return [p for p in PACKAGES if not (root / p.directory / MARKER).is_file()]


def fetch(root: Path, log: Callable[[str], None] = print) -> None:
    """Fetch every missing package into ``root`` (see the module docstring); raises RuntimeError on failure."""
    todo = missing(root)
    if not todo:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to fetch the docs pages' assets: install the Debian package `npm`")
    root.mkdir(parents=True, exist_ok=True)
    for package in todo:
        log(f"fetching {package.directory} from the npm registry (once) into {root} ...")
        staging = Path(tempfile.mkdtemp(prefix=f"{package.directory}.partial-", dir=root))
        try:
            _unpack(npm, package, staging)
            (staging / MARKER).write_text(package.integrity + "\n")
            target = root / package.directory
            if target.exists():
                shutil.rmtree(target)  # incomplete (no marker): not trusted
            try:
                staging.rename(target)
            except OSError:
                if not (target / MARKER).is_file():  # else another process finished the same fetch first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _unpack(npm: str, package: Package, staging: Path) -> None:
    spec = f"{package.name}@{package.version}"
    command = [npm, "pack", spec, "--pack-destination", str(staging), "--silent"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=staging)
    tarballs = list(staging.glob("*.tgz"))
    if done.returncode != 0 or len(tarballs) != 1:
        raise RuntimeError(f"`{' '.join(command)}` failed ({done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarballs[0].read_bytes()).digest()).decode()
    if digest != package.integrity:
        raise RuntimeError(f"{spec}: the tarball's integrity is {digest}, not the pinned {package.integrity}")
    with tarfile.open(tarballs[0]) as tar:
        for file in package.files:
            member = tar.getmember(f"package/{file}")
            source = tar.extractfile(member)
            if source is None:
                raise RuntimeError(f"{spec}: {file} is not a file")
            destination = staging / file
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(source.read())
    tarballs[0].unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.provision.web_assets",
        description="Fetch the pinned browser assets of the docs pages (Swagger UI, ReDoc, GraphiQL) from the npm "
        "registry into the cache directory ($PIPELINE_CACHE_DIR or ~/.cache/pipeline-gateway).",
    )
    parser.add_argument("--cache-dir", type=Path, help="instead of $PIPELINE_CACHE_DIR")
    args = parser.parse_args(argv)
    root = assets_dir(args.cache_dir)
    try:
        fetch(root)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
