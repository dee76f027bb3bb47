"""MNIST and Fashion-MNIST for the experiments: IDX files found locally or downloaded.

The four IDX files of a data set (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each gzipped with a ``.gz`` suffix or not) are
looked for, one file at a time, in this order:

1. an explicit directory (``data_dir``, the experiments' ``--data-dir``),
   holding ``<name>/`` or the files directly;
2. the directory named by the environment variable ``SPARSECORE_DATA``,
   holding ``<name>/`` or the files directly;
3. the cache, ``$XDG_CACHE_HOME/sparsecore/<name>`` (or
   ``~/.cache/sparsecore/<name>``);
4. the system directory ``/usr/share/datasets/<name>``, where Debian's
   ``dataset-fashion-mnist`` package installs the four ``.gz`` files;
5. a download from the canonical location into the cache, verified by its
   SHA-256 before it is renamed into place.

Checksums.  Every file carries two published SHA-256 digests: one of the
``.gz`` file as distributed, one of the decompressed IDX payload.  A
download must match the ``.gz`` digest.  A local ``.gz`` file must match
either digest; the second admits re-compressed copies such as Debian's,
whose gzip headers differ from upstream's while their content is the same.
An uncompressed local file is checked for structure only (magic number,
type code, dimensions and exact length).

Sources of the digests (all SHA-256).  MNIST ``.gz``: TensorFlow Datasets'
checksums for the CVDF mirror (the same files as the ossci-datasets mirror),
repeated by many projects; MNIST payloads: several independent projects that
pin the decompressed files.  Fashion-MNIST ``.gz``: torchvision's prototype
data set registry and many projects, consistent with the MD5 digests of
the Fashion-MNIST README; Fashion-MNIST payloads: several projects, and the
decompressed files of Debian's ``dataset-fashion-mnist`` (0.0~git20200523)
match them.

Splits.  ``train`` and ``valid`` divide the official training set, the
validation part being its last ``valid_size`` examples; ``test`` is the
official test set.  The bit-vector VAE uses ``valid_size=5000`` (55,000
training images); the semi-supervised VAE uses ``valid_size=10000`` and
draws 5,000 labeled examples from the remaining 50,000 with
:func:`labeled_split`.

This module needs NumPy only; callers convert to torch tensors themselves.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import numpy as np

__all__ = [
    "BITVECTOR_VALID_SIZE",
    "DATASETS",
    "SEMISUPERVISED_LABELED",
    "SEMISUPERVISED_VALID_SIZE",
    "DataError",
    "DatasetSpec",
    "FileSpec",
    "Split",
    "cache_dir",
    "find_files",
    "labeled_split",
    "load",
    "load_splits",
    "read_idx",
    "search_dirs",
    "write_idx",
]

#: Environment variable naming a directory that holds ``<name>/`` or the files.
ENV_VAR = "SPARSECORE_DATA"
#: Where system packages install data sets (Debian's ``dataset-fashion-mnist``).
SYSTEM_DATA_DIR = Path("/usr/share/datasets")
#: Seconds to wait on the network before a download counts as failed.
DOWNLOAD_TIMEOUT = 60.0

#: Validation examples at the end of the training set, bit-vector VAE (paper 5.3).
BITVECTOR_VALID_SIZE = 5_000
#: Validation examples at the end of the training set, semi-supervised VAE (paper 5.1).
SEMISUPERVISED_VALID_SIZE = 10_000
#: Labeled training examples of the semi-supervised VAE (paper 5.1).
SEMISUPERVISED_LABELED = 5_000

FILE_KEYS = ("train-images", "train-labels", "test-images", "test-labels")
SPLITS = ("train", "valid", "test")

_IDX_TYPE_UINT8 = 0x08
_IDX_TYPE_NAMES = {
    0x08: "uint8",
    0x09: "int8",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


class DataError(RuntimeError):
    """A data file is missing, truncated, corrupt or fails its checksum."""


@dataclass(frozen=True)
class FileSpec:
    """One distributed file of a data set.

    Attributes
    ----------
    name : str
        The canonical file name, gzipped (``train-images-idx3-ubyte.gz``).
    size : int
        Bytes of the ``.gz`` file as distributed.
    sha256 : str
        SHA-256 of the ``.gz`` file as distributed.
    payload_size : int
        Bytes of the decompressed IDX file.
    payload_sha256 : str
        SHA-256 of the decompressed IDX file.
    """

    name: str
    size: int
    sha256: str
    payload_size: int
    payload_sha256: str

    @property
    def plain_name(self) -> str:
        """The file name without the ``.gz`` suffix."""
        return self.name.removesuffix(".gz")


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set comes from and what its files must contain.

    Attributes
    ----------
    name : str
        Directory name of the data set (``fashion-mnist``).
    title : str
        Name for messages (``Fashion-MNIST``).
    url : str
        Base URL of the canonical download location, ending in ``/``.
    files : Mapping[str, FileSpec]
        The files under the keys ``train-images``, ``train-labels``,
        ``test-images`` and ``test-labels``.
    num_train, num_test : int
        Examples in the official training and test sets.
    image_shape : tuple of int
        Rows and columns of an image.
    num_classes : int
        Labels lie in ``[0, num_classes)``.
    package : str or None
        A Debian package that installs the files under
        ``/usr/share/datasets/<name>``, if one exists.
    """

    name: str
    title: str
    url: str
    files: Mapping[str, FileSpec]
    num_train: int
    num_test: int
    image_shape: tuple[int, int] = (28, 28)
    num_classes: int = 10
    package: str | None = None


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST",
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files={
            "train-images": FileSpec(
                "train-images-idx3-ubyte.gz",
                9_912_422,
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                47_040_016,
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            "train-labels": FileSpec(
                "train-labels-idx1-ubyte.gz",
                28_881,
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                60_008,
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            "test-images": FileSpec(
                "t10k-images-idx3-ubyte.gz",
                1_648_877,
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                7_840_016,
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            "test-labels": FileSpec(
                "t10k-labels-idx1-ubyte.gz",
                4_542,
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                10_008,
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        },
        num_train=60_000,
        num_test=10_000,
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files={
            "train-images": FileSpec(
                "train-images-idx3-ubyte.gz",
                26_421_880,
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                47_040_016,
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            "train-labels": FileSpec(
                "train-labels-idx1-ubyte.gz",
                29_515,
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                60_008,
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            "test-images": FileSpec(
                "t10k-images-idx3-ubyte.gz",
                4_422_102,
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                7_840_016,
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            "test-labels": FileSpec(
                "t10k-labels-idx1-ubyte.gz",
                5_148,
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                10_008,
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        },
        num_train=60_000,
        num_test=10_000,
        package="dataset-fashion-mnist",
    ),
}


@dataclass(frozen=True)
class Split:
    """Images and labels of one split.

    Attributes
    ----------
    images : numpy.ndarray
        ``uint8`` pixels of shape ``(n, 28, 28)``, or ``(n, 784)`` when
        flattened.
    labels : numpy.ndarray
        ``int64`` class indices of shape ``(n,)``.
    name : str
        The data set (``fashion-mnist``).
    split : str
        ``train``, ``valid`` or ``test``.
    """

    images: np.ndarray
    labels: np.ndarray
    name: str
    split: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ---------------------------------------------------------------------- IDX


def _parse_idx(payload: bytes, source: str) -> np.ndarray:
    """Decode the bytes of an uncompressed IDX file (see :func:`read_idx`)."""
    if len(payload) < 4:
        raise DataError(
            f"{source}: not an IDX file: {len(payload)} bytes, shorter than the 4-byte magic number"
        )
    if payload[0] != 0 or payload[1] != 0:
        raise DataError(
            f"{source}: not an IDX file: magic number 0x{payload[:4].hex()} "
            "does not start with two zero bytes"
        )
    type_code, ndim = payload[2], payload[3]
    if type_code != _IDX_TYPE_UINT8:
        kind = _IDX_TYPE_NAMES.get(type_code, "unknown")
        raise DataError(f"{source}: IDX data type code 0x{type_code:02x} ({kind}); expected 0x08 (uint8)")
    if ndim == 0:
        raise DataError(f"{source}: IDX magic number 0x{payload[:4].hex()} declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(payload) < header_size:
        raise DataError(
            f"{source}: truncated IDX header: {len(payload)} bytes, the header of a "
            f"{ndim}-dimensional file has {header_size}"
        )
    shape = tuple(int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + int(np.prod(shape, dtype=np.uint64))
    if len(payload) < expected:
        raise DataError(
            f"{source}: truncated IDX file: its header declares shape {shape} "
            f"({expected} bytes with the header), the file has {len(payload)}"
        )
    if len(payload) > expected:
        raise DataError(
            f"{source}: IDX file has {len(payload) - expected} bytes more than its header's "
            f"shape {shape} declares ({expected} bytes with the header)"
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def _decompress(raw: bytes, source: str) -> bytes:
    """The payload of ``raw``: decompressed if it starts with the gzip magic bytes."""
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{source}: corrupt or truncated gzip data ({error})") from error


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file of unsigned bytes, gzipped or not.

    IDX files start with a magic number ``0x0000TTDD`` (``TT`` the data type
    code, ``0x08`` for unsigned bytes; ``DD`` the number of dimensions), then
    one big-endian 32-bit size per dimension, then the data in C order.
    MNIST's image files have magic number ``0x00000803`` and shape
    ``(n, rows, cols)``; its label files ``0x00000801`` and shape ``(n,)``.

    Parameters
    ----------
    path : str or os.PathLike
        The file; gzip compression is recognized by its first two bytes.

    Returns
    -------
    numpy.ndarray
        A writable ``uint8`` array of the shape the header declares.

    Raises
    ------
    DataError
        If the file is not IDX, its data type is not ``uint8``, or its length
        differs from what its header declares (truncated or oversized).
    OSError
        If the file cannot be read.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/labels-idx1-ubyte.gz"
    >>> write_idx(path, np.array([3, 1, 4], dtype=np.uint8))
    >>> read_idx(path)
    array([3, 1, 4], dtype=uint8)
    """
    source = os.fspath(path)
    return _parse_idx(_decompress(Path(path).read_bytes(), source), source)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write a ``uint8`` array as an IDX file, gzipped when the name ends in ``.gz``.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write (replaced if it exists).
    array : numpy.ndarray
        ``uint8`` data with 1 to 255 dimensions, each below ``2**32``.

    Raises
    ------
    ValueError
        If ``array`` is not ``uint8`` or has no dimensions or a too large one.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/images-idx3-ubyte"
    >>> write_idx(path, np.zeros((2, 3, 3), dtype=np.uint8))
    >>> read_idx(path).shape
    (2, 3, 3)
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"array: expected dtype uint8, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"array: expected 1 to 255 dimensions, got {array.ndim}")
    if any(size >= 2**32 for size in array.shape):
        raise ValueError(f"array: every dimension must be below 2**32, got shape {array.shape}")
    header = bytes((0, 0, _IDX_TYPE_UINT8, array.ndim)) + b"".join(
        size.to_bytes(4, "big") for size in array.shape
    )
    payload = header + np.ascontiguousarray(array).tobytes()
    if os.fspath(path).endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    Path(path).write_bytes(payload)


# ----------------------------------------------------------------- locating


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"name: unknown data set {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]


def cache_dir(name: str) -> Path:
    """The cache directory of a data set, where downloads go.

    Parameters
    ----------
    name : str
        The data set, a key of :data:`DATASETS`.

    Returns
    -------
    pathlib.Path
        ``$XDG_CACHE_HOME/sparsecore/<name>``, or ``~/.cache/sparsecore/<name>``
        when ``XDG_CACHE_HOME`` is unset or empty.
    """
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "sparsecore" / name


def search_dirs(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The directories searched for a data set's files, first to last.

    Parameters
    ----------
    name : str
        The data set, a key of :data:`DATASETS`.
    data_dir : str or os.PathLike, optional
        An explicit directory (``--data-dir``), holding ``<name>/`` or the
        files directly.

    Returns
    -------
    list of pathlib.Path
        ``data_dir/<name>``, ``data_dir``, ``$SPARSECORE_DATA/<name>``,
        ``$SPARSECORE_DATA``, :func:`cache_dir` and
        ``/usr/share/datasets/<name>`` (:data:`SYSTEM_DATA_DIR`), leaving out
        those not given.
    """
    _spec(name)
    directories: list[Path] = []
    if data_dir is not None:
        directories += [Path(data_dir) / name, Path(data_dir)]
    env_dir = os.environ.get(ENV_VAR)
    if env_dir:
        directories += [Path(env_dir) / name, Path(env_dir)]
    return [*directories, cache_dir(name), Path(SYSTEM_DATA_DIR) / name]


def _how_to_get(spec: DatasetSpec, name: str, data_dir: str | os.PathLike[str] | None) -> str:
    lines = [
        f"Looked in (first to last): {', '.join(str(p) for p in search_dirs(name, data_dir))}.",
        "To get the data:",
    ]
    if spec.package:
        lines.append(
            f"  - on Debian or Ubuntu: `sudo apt-get install {spec.package}` "
            f"(installs /usr/share/datasets/{spec.name});"
        )
    files = ", ".join(file.name for file in spec.files.values())
    lines += [
        f"  - or download {files} from {spec.url} into a directory and pass it as --data-dir "
        f"(or data_dir=), or set {ENV_VAR} to it (the files directly or under {spec.name}/),",
        f"    or put them in {cache_dir(name)};",
        "  - or allow the download (download=True), which saves them in that cache.",
    ]
    return "\n".join(lines)


def _download(url: str, destination: Path, file: FileSpec) -> None:
    """Download ``url`` to ``destination``, verified against ``file.sha256``.

    The bytes go to a temporary file in the destination's directory, which is
    renamed into place only once the digest matches, and removed otherwise.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(handle, "wb") as out, urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if received > file.size:
                    raise DataError(
                        f"{url}: more than the expected {file.size} bytes; not the published file"
                    )
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != file.sha256:
            raise DataError(
                f"{url}: SHA-256 mismatch after downloading {received} bytes: got {digest.hexdigest()}, "
                f"expected {file.sha256} ({file.size} bytes); the file was discarded"
            )
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def find_files(
    name: str, data_dir: str | os.PathLike[str] | None = None, download: bool = True
) -> dict[str, Path]:
    """Locate a data set's four IDX files, downloading missing ones into the cache.

    Each file is looked for, gzipped (canonical name) or uncompressed, in
    :func:`search_dirs` order; the first hit wins.  A file found nowhere is
    downloaded from the data set's URL into :func:`cache_dir` when
    ``download`` is true.  Local files are not verified here; :func:`load`
    verifies them as it reads them.

    Parameters
    ----------
    name : str
        ``"mnist"`` or ``"fashion-mnist"`` (a key of :data:`DATASETS`).
    data_dir : str or os.PathLike, optional
        An explicit directory searched first (``--data-dir``).
    download : bool, default True
        Whether to download files found nowhere.

    Returns
    -------
    dict of str to pathlib.Path
        The files under the keys ``train-images``, ``train-labels``,
        ``test-images`` and ``test-labels``.

    Raises
    ------
    ValueError
        If ``name`` is not a known data set.
    DataError
        If a file is found nowhere and downloading is disabled or fails, or
        a download fails its checksum; the message lists where it looked and
        how to get the data.
    """
    spec = _spec(name)
    directories = search_dirs(name, data_dir)
    found: dict[str, Path] = {}
    for key in FILE_KEYS:
        file = spec.files[key]
        candidates = [directory / base for directory in directories for base in (file.name, file.plain_name)]
        hit = next((path for path in candidates if path.is_file()), None)
        if hit is None:
            if not download:
                raise DataError(
                    f"{spec.title}: {file.name} (or {file.plain_name}) not found and downloading is "
                    f"disabled.\n{_how_to_get(spec, name, data_dir)}"
                )
            url = spec.url + file.name
            hit = cache_dir(name) / file.name
            try:
                _download(url, hit, file)
            except (OSError, DataError) as error:  # URLError and timeouts are OSErrors
                raise DataError(
                    f"{spec.title}: {file.name} (or {file.plain_name}) not found, and downloading "
                    f"{url} failed: {error}\n{_how_to_get(spec, name, data_dir)}"
                ) from error
        found[key] = hit
    return found


# ------------------------------------------------------------------ loading


def _read_verified(
    path: Path, file: FileSpec, spec: DatasetSpec, name: str, data_dir: str | os.PathLike[str] | None
) -> np.ndarray:
    """Read one data file, verifying its checksum if it is gzipped."""
    source = os.fspath(path)
    hint = f"Delete or replace {source}.\n{_how_to_get(spec, name, data_dir)}"
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{source}: cannot be read ({error}).\n{hint}") from error
    try:
        payload = _decompress(raw, source)
        if path.name == file.name:
            # The published .gz, or a re-compressed copy of its content (Debian's).
            as_published = raw.startswith(_GZIP_MAGIC) and hashlib.sha256(raw).hexdigest() == file.sha256
            if not as_published and hashlib.sha256(payload).hexdigest() != file.payload_sha256:
                raise DataError(
                    f"{source}: checksum mismatch: neither the file's SHA-256 matches the published "
                    f"{file.sha256} nor its decompressed content's the published {file.payload_sha256}; "
                    "the file is corrupt or not the published one"
                )
        return _parse_idx(payload, source)
    except DataError as error:
        raise DataError(f"{error}.\n{hint}") from error


def _read_all(
    name: str, data_dir: str | os.PathLike[str] | None, download: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Verified (train images, train labels, test images, test labels)."""
    spec = _spec(name)
    paths = find_files(name, data_dir, download)
    arrays = {key: _read_verified(paths[key], spec.files[key], spec, name, data_dir) for key in FILE_KEYS}
    for part, count in (("train", spec.num_train), ("test", spec.num_test)):
        images, labels = arrays[f"{part}-images"], arrays[f"{part}-labels"]
        problems = []
        if images.shape != (count, *spec.image_shape):
            problems.append(
                f"{paths[f'{part}-images']} has shape {images.shape}, expected {(count, *spec.image_shape)}"
            )
        if labels.shape != (count,):
            problems.append(f"{paths[f'{part}-labels']} has shape {labels.shape}, expected {(count,)}")
        elif labels.size and int(labels.max()) >= spec.num_classes:
            problems.append(
                f"{paths[f'{part}-labels']} holds label {int(labels.max())}, "
                f"expected labels below {spec.num_classes}"
            )
        if problems:
            raise DataError(f"{spec.title}: {'; '.join(problems)}.\n{_how_to_get(spec, name, data_dir)}")
    return arrays["train-images"], arrays["train-labels"], arrays["test-images"], arrays["test-labels"]


def _check_valid_size(valid_size: int, num_train: int) -> None:
    if isinstance(valid_size, bool) or not isinstance(valid_size, (int, np.integer)):
        raise TypeError(f"valid_size: expected an int, got {type(valid_size).__name__}")
    if not 0 <= valid_size < num_train:
        raise ValueError(f"valid_size: expected 0 <= valid_size < {num_train}, got {valid_size}")


def load_splits(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    valid_size: int = BITVECTOR_VALID_SIZE,
    flatten: bool = False,
) -> dict[str, Split]:
    """Load the ``train``, ``valid`` and ``test`` splits of a data set, reading its files once.

    Parameters
    ----------
    name : str
        ``"mnist"`` or ``"fashion-mnist"``.
    data_dir : str or os.PathLike, optional
        An explicit directory searched first (``--data-dir``); see
        :func:`find_files` for the search order.
    download : bool, default True
        Whether to download files found nowhere.
    valid_size : int, default 5000
        Examples at the end of the official training set that form ``valid``
        (:data:`BITVECTOR_VALID_SIZE`; the semi-supervised VAE uses
        :data:`SEMISUPERVISED_VALID_SIZE`).  ``train`` is the rest of it.
    flatten : bool, default False
        Images of shape ``(n, 784)`` instead of ``(n, 28, 28)``.

    Returns
    -------
    dict of str to Split
        The splits under the keys ``train``, ``valid`` and ``test``.

    Raises
    ------
    DataError
        If a file is missing, corrupt, truncated, fails its checksum or has
        the wrong shape (see :func:`find_files`).
    ValueError, TypeError
        For an unknown ``name`` or a ``valid_size`` outside
        ``[0, num_train)``.
    """
    spec = _spec(name)
    _check_valid_size(valid_size, spec.num_train)
    train_images, train_labels, test_images, test_labels = _read_all(name, data_dir, download)
    if flatten:
        train_images = train_images.reshape(train_images.shape[0], -1)
        test_images = test_images.reshape(test_images.shape[0], -1)
    train_labels = train_labels.astype(np.int64)
    test_labels = test_labels.astype(np.int64)
    cut = spec.num_train - valid_size
    return {
        "train": Split(train_images[:cut], train_labels[:cut], name, "train"),
        "valid": Split(train_images[cut:], train_labels[cut:], name, "valid"),
        "test": Split(test_images, test_labels, name, "test"),
    }


def load(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    valid_size: int = BITVECTOR_VALID_SIZE,
    flatten: bool = False,
) -> Split:
    """Load one split of a data set.

    Parameters
    ----------
    name : str
        ``"mnist"`` or ``"fashion-mnist"``.
    split : str
        ``"train"`` (the official training set less its last
        ``valid_size`` examples), ``"valid"`` (those examples) or ``"test"``
        (the official test set).
    data_dir : str or os.PathLike, optional
        An explicit directory searched first (``--data-dir``); see
        :func:`find_files` for the search order.
    download : bool, default True
        Whether to download files found nowhere.
    valid_size : int, default 5000
        Size of the validation split (:data:`BITVECTOR_VALID_SIZE`; the
        semi-supervised VAE uses :data:`SEMISUPERVISED_VALID_SIZE`).
    flatten : bool, default False
        Images of shape ``(n, 784)`` instead of ``(n, 28, 28)``.

    Returns
    -------
    Split
        ``uint8`` images and ``int64`` labels.

    Raises
    ------
    DataError
        If a file is missing, corrupt, truncated, fails its checksum or has
        the wrong shape; the message says where it looked and how to get the
        data.
    ValueError, TypeError
        For an unknown ``name`` or ``split``, or a bad ``valid_size``.

    Examples
    --------
    >>> valid = load("fashion-mnist", "valid", download=False)  # doctest: +SKIP
    >>> valid.images.shape, valid.labels.dtype  # doctest: +SKIP
    ((5000, 28, 28), dtype('int64'))
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return load_splits(name, data_dir, download, valid_size=valid_size, flatten=flatten)[split]


def labeled_split(labels: np.ndarray, n_labeled: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw a class-balanced labeled subset, reproducibly; the rest is unlabeled.

    Every class present in ``labels`` gets ``n_labeled // C`` examples (``C``
    the number of classes); the ``n_labeled % C`` remaining ones go to as many
    classes drawn at random.  The draw depends only on ``labels``,
    ``n_labeled`` and ``seed``.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer class labels of shape ``(n,)``.
    n_labeled : int
        Size of the labeled subset, ``0 <= n_labeled <= n``.
    seed : int
        Seed of the NumPy generator that draws the subset.

    Returns
    -------
    labeled, unlabeled : numpy.ndarray
        Sorted ``int64`` indices into ``labels``, disjoint, together covering
        ``range(n)``.

    Raises
    ------
    ValueError
        If ``labels`` is not one-dimensional integers, ``n_labeled`` is out of
        range, or a class has fewer examples than its share.

    Examples
    --------
    >>> import numpy as np
    >>> labeled, unlabeled = labeled_split(np.array([0, 1, 0, 1, 0, 1]), 4, seed=0)
    >>> len(labeled), len(unlabeled)
    (4, 2)
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels: expected a 1-d integer array, got dtype {labels.dtype} and shape {labels.shape}"
        )
    if isinstance(n_labeled, bool) or not isinstance(n_labeled, (int, np.integer)):
        raise TypeError(f"n_labeled: expected an int, got {type(n_labeled).__name__}")
    if not 0 <= n_labeled <= labels.shape[0]:
        raise ValueError(f"n_labeled: expected 0 <= n_labeled <= {labels.shape[0]}, got {n_labeled}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if classes.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    shares = np.full(classes.size, n_labeled // classes.size)
    shares[rng.permutation(classes.size)[: n_labeled % classes.size]] += 1
    chosen = []
    for label, share in zip(classes, shares, strict=True):
        members = np.flatnonzero(labels == label)
        if share > members.size:
            raise ValueError(
                f"n_labeled: class {label} has {members.size} examples, fewer than its share {share} "
                f"of {n_labeled} labeled examples over {classes.size} classes"
            )
        chosen.append(rng.choice(members, size=share, replace=False))
    labeled = np.sort(np.concatenate(chosen)).astype(np.int64)
    mask = np.ones(labels.shape[0], dtype=bool)
    mask[labeled] = False
    return labeled, np.flatnonzero(mask).astype(np.int64)
