"""experiments.data: IDX files, the search order, verified downloads and the splits.

No test touches the network: ``urlopen`` is replaced by a fake that serves
local bytes or fails, and every search directory points into ``tmp_path``,
except in the one test that reads Debian's Fashion-MNIST when installed.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import io
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest

from experiments import data

SYSTEM_DATA_DIR = data.SYSTEM_DATA_DIR  # the real one, before the fixture below redirects it
DEBIAN_FASHION = SYSTEM_DATA_DIR / "fashion-mnist"

TINY_TRAIN, TINY_TEST, TINY_SHAPE, TINY_CLASSES = 20, 10, (4, 3), 3


def _forbidden_urlopen(url, timeout=None):
    raise AssertionError(f"a test tried to open {url}")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network, no environment variable, a private cache and system directory."""
    monkeypatch.setattr(data, "urlopen", _forbidden_urlopen)
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")
    return tmp_path


def _idx_bytes(array: np.ndarray) -> bytes:
    """An independent IDX encoder (big-endian header, C-order data)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


class Tiny:
    """A small data set registered as ``tiny``, with the digests of its own files."""

    name = "tiny"
    url = "https://example.invalid/tiny/"

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.arrays = {
            "train-images": rng.integers(0, 256, size=(TINY_TRAIN, *TINY_SHAPE), dtype=np.uint8),
            "train-labels": (np.arange(TINY_TRAIN) % TINY_CLASSES).astype(np.uint8),
            "test-images": rng.integers(0, 256, size=(TINY_TEST, *TINY_SHAPE), dtype=np.uint8),
            "test-labels": (np.arange(TINY_TEST) % TINY_CLASSES).astype(np.uint8),
        }
        names = {
            "train-images": "train-images-idx3-ubyte.gz",
            "train-labels": "train-labels-idx1-ubyte.gz",
            "test-images": "t10k-images-idx3-ubyte.gz",
            "test-labels": "t10k-labels-idx1-ubyte.gz",
        }
        self.gz = {key: gzip.compress(_idx_bytes(array), mtime=0) for key, array in self.arrays.items()}
        files = {
            key: data.FileSpec(
                names[key],
                len(self.gz[key]),
                hashlib.sha256(self.gz[key]).hexdigest(),
                len(_idx_bytes(self.arrays[key])),
                hashlib.sha256(_idx_bytes(self.arrays[key])).hexdigest(),
            )
            for key in names
        }
        self.spec = data.DatasetSpec(
            name=self.name,
            title="Tiny",
            url=self.url,
            files=files,
            num_train=TINY_TRAIN,
            num_test=TINY_TEST,
            image_shape=TINY_SHAPE,
            num_classes=TINY_CLASSES,
        )

    def write(self, directory: Path, compressed: bool = True) -> Path:
        """Write the four files (as published, or uncompressed) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        for key, file in self.spec.files.items():
            if compressed:
                (directory / file.name).write_bytes(self.gz[key])
            else:
                (directory / file.plain_name).write_bytes(_idx_bytes(self.arrays[key]))
        return directory

    def urls(self) -> dict[str, bytes]:
        return {self.url + file.name: self.gz[key] for key, file in self.spec.files.items()}


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Tiny:
    dataset = Tiny()
    monkeypatch.setitem(data.DATASETS, dataset.name, dataset.spec)
    return dataset


class Server:
    """A fake ``urlopen`` serving bytes from a dict, recording the requests."""

    def __init__(self, contents: dict[str, bytes]) -> None:
        self.contents = contents
        self.requested: list[str] = []

    def __call__(self, url: str, timeout: float | None = None) -> io.BytesIO:
        self.requested.append(url)
        if url not in self.contents:
            raise URLError(f"no route to {url}")
        return io.BytesIO(self.contents[url])


def _files_under(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file()) if directory.exists() else []


# ---------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 28, 28), (0, 28, 28)])
def test_idx_round_trip(tmp_path: Path, suffix: str, shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / f"file-idx{len(shape)}-ubyte{suffix}"
    data.write_idx(path, array)
    raw = path.read_bytes()
    payload = gzip.decompress(raw) if suffix else raw
    assert raw.startswith(b"\x1f\x8b") == bool(suffix)
    assert payload == _idx_bytes(array)
    assert int.from_bytes(payload[:4], "big") == 0x800 + len(shape)  # 0x00000801 labels, 0x00000803 images
    result = data.read_idx(path)
    assert result.dtype == np.uint8
    assert result.shape == shape
    np.testing.assert_array_equal(result, array)
    assert result.flags.writeable


def test_read_idx_reads_independently_written_files(tmp_path: Path) -> None:
    labels = np.array([5, 0, 4, 1, 9], dtype=np.uint8)
    (tmp_path / "labels").write_bytes(bytes.fromhex("00000801 00000005") + labels.tobytes())
    np.testing.assert_array_equal(data.read_idx(tmp_path / "labels"), labels)


def test_write_idx_rejects_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        data.write_idx(tmp_path / "x", np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="dimensions"):
        data.write_idx(tmp_path / "x", np.uint8(3))


def _corrupt(tmp_path: Path, payload: bytes, compressed: bool) -> Path:
    path = tmp_path / ("bad-idx3-ubyte.gz" if compressed else "bad-idx3-ubyte")
    path.write_bytes(gzip.compress(payload) if compressed else payload)
    return path


GOOD = _idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (GOOD[:-1], "truncated IDX file"),
        (GOOD[:10], "truncated IDX header"),
        (GOOD[:2], "not an IDX file"),
        (GOOD + b"\x00\x07", "2 bytes more"),
        (b"\x12\x34" + GOOD[2:], "magic number 0x12340803"),
        (GOOD[:2] + b"\x0d" + GOOD[3:], r"type code 0x0d \(float32\); expected 0x08"),
        (GOOD[:3] + b"\x00", "0 dimensions"),
    ],
    ids=["truncated", "short-header", "tiny", "extra-bytes", "magic", "dtype-code", "no-dims"],
)
def test_read_idx_reports_bad_files(tmp_path: Path, payload: bytes, message: str, compressed: bool) -> None:
    path = _corrupt(tmp_path, payload, compressed)
    with pytest.raises(data.DataError, match=message) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_reports_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "cut-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(GOOD)[:-9])
    with pytest.raises(data.DataError, match="corrupt or truncated gzip") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)
    assert issubclass(data.DataError, RuntimeError)


# -------------------------------------------------------------- search order


def test_search_dirs_order(tiny: Tiny, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.ENV_VAR, str(isolated / "env"))
    assert data.search_dirs("tiny", isolated / "explicit") == [
        isolated / "explicit" / "tiny",
        isolated / "explicit",
        isolated / "env" / "tiny",
        isolated / "env",
        isolated / "cache-home" / "sparsecore" / "tiny",
        isolated / "system" / "tiny",
    ]
    monkeypatch.delenv(data.ENV_VAR)
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.search_dirs("tiny") == [
        Path.home() / ".cache" / "sparsecore" / "tiny",
        isolated / "system" / "tiny",
    ]


def test_search_order_explicit_env_cache_system(
    tiny: Tiny, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = tiny.write(isolated / "explicit")  # the files directly
    env = tiny.write(isolated / "env" / "tiny")  # under <name>/
    cache = tiny.write(data.cache_dir("tiny"))
    system = tiny.write(isolated / "system" / "tiny")
    monkeypatch.setenv(data.ENV_VAR, str(isolated / "env"))
    for winner in (explicit, env, cache, system):
        found = data.find_files("tiny", explicit, download=False)
        assert set(found) == {"train-images", "train-labels", "test-images", "test-labels"}
        assert {path.parent for path in found.values()} == {winner}
        assert data.load("tiny", "test", explicit, download=False, valid_size=5).images.shape == (
            TINY_TEST,
            *TINY_SHAPE,
        )
        for path in _files_under(winner):
            path.unlink()


def test_explicit_dir_with_name_subfolder_and_env_dir_with_files(
    tiny: Tiny, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nested = tiny.write(isolated / "explicit" / "tiny")
    direct = tiny.write(isolated / "env")
    monkeypatch.setenv(data.ENV_VAR, str(direct))
    assert {p.parent for p in data.find_files("tiny", isolated / "explicit", download=False).values()} == {
        nested
    }
    assert {p.parent for p in data.find_files("tiny", download=False).values()} == {direct}


def test_uncompressed_files_are_found_and_checked_for_structure_only(tiny: Tiny, isolated: Path) -> None:
    directory = tiny.write(isolated / "plain", compressed=False)
    images = tiny.arrays["test-images"].copy()
    images[0, 0, 0] ^= 0xFF  # not the published content, but well-formed
    data.write_idx(directory / "t10k-images-idx3-ubyte", images)
    found = data.find_files("tiny", directory, download=False)
    assert found["test-images"] == directory / "t10k-images-idx3-ubyte"
    np.testing.assert_array_equal(
        data.load("tiny", "test", directory, download=False, valid_size=5).images, images
    )
    (directory / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(images)[:-1])
    with pytest.raises(data.DataError, match="truncated IDX file"):
        data.load("tiny", "test", directory, download=False, valid_size=5)


def test_recompressed_gz_is_accepted_by_its_content_checksum(tiny: Tiny, isolated: Path) -> None:
    """Debian ships re-compressed .gz files: other bytes, the same content."""
    directory = tiny.write(isolated / "debian")
    path = directory / "train-images-idx3-ubyte.gz"
    recompressed = gzip.compress(_idx_bytes(tiny.arrays["train-images"]), compresslevel=1, mtime=12345)
    assert hashlib.sha256(recompressed).hexdigest() != tiny.spec.files["train-images"].sha256
    path.write_bytes(recompressed)
    train = data.load("tiny", "train", directory, download=False, valid_size=0)
    np.testing.assert_array_equal(train.images, tiny.arrays["train-images"])


def test_corrupt_local_gz_fails_its_checksum(tiny: Tiny, isolated: Path) -> None:
    directory = tiny.write(isolated / "local")
    images = tiny.arrays["train-images"].copy()
    images[3, 1, 2] ^= 1
    data.write_idx(directory / "train-images-idx3-ubyte.gz", images)  # well-formed, wrong content
    with pytest.raises(data.DataError, match="checksum mismatch") as info:
        data.load("tiny", "train", directory, download=False, valid_size=5)
    message = str(info.value)
    assert str(directory / "train-images-idx3-ubyte.gz") in message
    assert "Delete or replace" in message
    assert tiny.url in message


def test_truncated_local_gz_is_reported(tiny: Tiny, isolated: Path) -> None:
    directory = tiny.write(isolated / "local")
    path = directory / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(tiny.gz["test-labels"][:-5])
    with pytest.raises(data.DataError, match="corrupt or truncated gzip") as info:
        data.load("tiny", "test", directory, download=False, valid_size=5)
    assert str(path) in str(info.value)


def test_wrong_shape_is_reported(tiny: Tiny, isolated: Path) -> None:
    directory = tiny.write(isolated / "local", compressed=False)
    data.write_idx(directory / "train-labels-idx1-ubyte", tiny.arrays["train-labels"][:-1])
    with pytest.raises(data.DataError, match=r"has shape \(19,\), expected \(20,\)"):
        data.load("tiny", "train", directory, download=False, valid_size=5)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_missing_data_says_where_it_looked_and_how_to_get_it(
    name: str, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(data.ENV_VAR, str(isolated / "env"))
    with pytest.raises(data.DataError, match="downloading is disabled") as info:
        data.load(name, "train", isolated / "explicit", download=False)
    message = str(info.value)
    for directory in data.search_dirs(name, isolated / "explicit"):
        assert str(directory) in message
    spec = data.DATASETS[name]
    assert spec.url in message
    assert "--data-dir" in message
    assert data.ENV_VAR in message
    assert ("apt-get install dataset-fashion-mnist" in message) == (name == "fashion-mnist")


def test_canonical_locations_and_digests_are_well_formed() -> None:
    assert data.DATASETS["mnist"].url == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert data.DATASETS["fashion-mnist"].url == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    for spec in data.DATASETS.values():
        assert [file.name for file in spec.files.values()] == [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ]
        for file in spec.files.values():
            for digest in (file.sha256, file.payload_sha256):
                assert len(digest) == 64
                assert set(digest) <= set("0123456789abcdef")
        sizes = [file.payload_size for file in spec.files.values()]
        assert sizes == [16 + 60_000 * 784, 8 + 60_000, 16 + 10_000 * 784, 8 + 10_000]


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown data set 'cifar'"):
        data.find_files("cifar")
    with pytest.raises(ValueError, match="split"):
        data.load("mnist", "validation")


# ---------------------------------------------------------------- downloads


def test_download_lands_in_the_cache_and_verifies(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(tiny.urls())
    monkeypatch.setattr(data, "urlopen", server)
    splits = data.load_splits("tiny", valid_size=5)
    cache = data.cache_dir("tiny")
    assert sorted(server.requested) == sorted(tiny.urls())
    assert _files_under(cache) == sorted(cache / file.name for file in tiny.spec.files.values())
    for key, file in tiny.spec.files.items():
        assert (cache / file.name).read_bytes() == tiny.gz[key]
    np.testing.assert_array_equal(splits["test"].images, tiny.arrays["test-images"])
    # Found in the cache the second time: no request.
    monkeypatch.setattr(data, "urlopen", _forbidden_urlopen)
    assert {p.parent for p in data.find_files("tiny", download=False).values()} == {cache}


def test_download_fetches_only_missing_files(
    tiny: Tiny, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tiny.write(isolated / "partial")
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    server = Server(tiny.urls())
    monkeypatch.setattr(data, "urlopen", server)
    found = data.find_files("tiny", directory)
    assert server.requested == [tiny.url + "t10k-labels-idx1-ubyte.gz"]
    assert found["test-labels"] == data.cache_dir("tiny") / "t10k-labels-idx1-ubyte.gz"
    assert found["test-images"] == directory / "t10k-images-idx3-ubyte.gz"


def test_download_with_wrong_checksum_leaves_nothing(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = tiny.urls()
    url = tiny.url + "train-images-idx3-ubyte.gz"
    tampered = bytearray(contents[url])
    tampered[-20] ^= 0x01
    contents[url] = bytes(tampered)
    monkeypatch.setattr(data, "urlopen", Server(contents))
    with pytest.raises(data.DataError, match="SHA-256 mismatch") as info:
        data.load("tiny", "train", valid_size=5)
    assert url in str(info.value)
    assert _files_under(data.cache_dir("tiny")) == []


def test_oversized_download_leaves_nothing(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = {url: body + b"\x00" * 100 for url, body in tiny.urls().items()}
    monkeypatch.setattr(data, "urlopen", Server(contents))
    with pytest.raises(data.DataError, match="more than the expected"):
        data.find_files("tiny")
    assert _files_under(data.cache_dir("tiny")) == []


class _Interrupted(io.BytesIO):
    """A response that breaks off after its first chunk."""

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() > 0:
            raise ConnectionResetError("connection reset by peer")
        return super().read(10)


def test_interrupted_download_leaves_nothing(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "urlopen", lambda url, timeout=None: _Interrupted(tiny.urls()[url]))
    with pytest.raises(data.DataError, match="connection reset by peer") as info:
        data.find_files("tiny")
    assert "To get the data" in str(info.value)
    assert _files_under(data.cache_dir("tiny")) == []


def test_unreachable_server_says_how_to_get_the_data(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server({})
    monkeypatch.setattr(data, "urlopen", server)
    with pytest.raises(data.DataError, match="no route to") as info:
        data.load("fashion-mnist", "test")
    message = str(info.value)
    assert server.requested == [data.DATASETS["fashion-mnist"].url + "train-images-idx3-ubyte.gz"]
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message
    assert data.ENV_VAR in message
    assert _files_under(data.cache_dir("fashion-mnist")) == []


# -------------------------------------------------------------------- splits


def test_splits_sizes_types_and_disjointness(tiny: Tiny, isolated: Path) -> None:
    directory = tiny.write(isolated / "local")
    splits = data.load_splits("tiny", directory, download=False, valid_size=6)
    assert {name: len(split) for name, split in splits.items()} == {"train": 14, "valid": 6, "test": 10}
    for name, split in splits.items():
        assert split.split == name
        assert split.name == "tiny"
        assert split.images.dtype == np.uint8
        assert split.labels.dtype == np.int64
        assert split.images.shape == (len(split), *TINY_SHAPE)
    # train is the head of the official training set and valid its tail: disjoint, together all of it.
    np.testing.assert_array_equal(splits["train"].images, tiny.arrays["train-images"][:14])
    np.testing.assert_array_equal(splits["valid"].images, tiny.arrays["train-images"][14:])
    np.testing.assert_array_equal(splits["valid"].labels, tiny.arrays["train-labels"][14:])
    np.testing.assert_array_equal(splits["test"].labels, tiny.arrays["test-labels"])
    train_rows = {row.tobytes() for row in splits["train"].images}
    valid_rows = {row.tobytes() for row in splits["valid"].images}
    assert len(train_rows) == 14
    assert not train_rows & valid_rows
    single = data.load("tiny", "valid", directory, download=False, valid_size=6, flatten=True)
    assert single.images.shape == (6, TINY_SHAPE[0] * TINY_SHAPE[1])
    np.testing.assert_array_equal(single.images, splits["valid"].images.reshape(6, -1))


def test_valid_size_is_checked(tiny: Tiny, isolated: Path) -> None:
    directory = tiny.write(isolated / "local")
    for bad in (-1, TINY_TRAIN):
        with pytest.raises(ValueError, match="valid_size"):
            data.load("tiny", "train", directory, download=False, valid_size=bad)
    with pytest.raises(TypeError, match="valid_size"):
        data.load("tiny", "train", directory, download=False, valid_size=5.0)
    assert len(data.load("tiny", "train", directory, download=False, valid_size=0)) == TINY_TRAIN
    assert len(data.load("tiny", "valid", directory, download=False, valid_size=0)) == 0


def test_experiment_defaults() -> None:
    assert data.BITVECTOR_VALID_SIZE == 5_000
    assert data.SEMISUPERVISED_VALID_SIZE == 10_000
    assert data.SEMISUPERVISED_LABELED == 5_000
    for function in (data.load, data.load_splits):
        assert inspect.signature(function).parameters["valid_size"].default == data.BITVECTOR_VALID_SIZE


def test_labeled_split_is_balanced_reproducible_and_disjoint() -> None:
    rng = np.random.default_rng(3)
    labels = rng.choice(10, size=50_000, p=np.linspace(1, 2, 10) / np.linspace(1, 2, 10).sum())
    labeled, unlabeled = data.labeled_split(labels, 5_000, seed=7)
    assert labeled.dtype == unlabeled.dtype == np.int64
    assert (len(labeled), len(unlabeled)) == (5_000, 45_000)
    np.testing.assert_array_equal(np.bincount(labels[labeled], minlength=10), np.full(10, 500))
    assert np.intersect1d(labeled, unlabeled).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([labeled, unlabeled])), np.arange(50_000))
    again, _ = data.labeled_split(labels, 5_000, seed=7)
    np.testing.assert_array_equal(labeled, again)
    other, _ = data.labeled_split(labels, 5_000, seed=8)
    assert not np.array_equal(labeled, other)


def test_labeled_split_spreads_a_remainder_and_rejects_impossible_requests() -> None:
    labels = np.repeat(np.arange(3), [5, 6, 7])
    labeled, unlabeled = data.labeled_split(labels, 8, seed=0)
    counts = np.bincount(labels[labeled], minlength=3)
    assert counts.sum() == 8
    assert counts.max() - counts.min() <= 1
    assert len(unlabeled) == 10
    with pytest.raises(ValueError, match="class 0 has 5 examples"):
        data.labeled_split(labels, 18, seed=0)
    with pytest.raises(ValueError, match="n_labeled"):
        data.labeled_split(labels, 19, seed=0)
    with pytest.raises(ValueError, match="labels"):
        data.labeled_split(labels.astype(float), 3, seed=0)


def test_semisupervised_recipe(tiny: Tiny, isolated: Path) -> None:
    """Validation from the end of the training set; labeled and unlabeled from the rest."""
    directory = tiny.write(isolated / "local")
    splits = data.load_splits("tiny", directory, download=False, valid_size=8)
    labeled, unlabeled = data.labeled_split(splits["train"].labels, 6, seed=0)
    assert len(labeled) + len(unlabeled) == len(splits["train"]) == 12
    np.testing.assert_array_equal(np.bincount(splits["train"].labels[labeled]), [2, 2, 2])


# --------------------------------------------------- Debian's Fashion-MNIST


@pytest.mark.skipif(
    not all(
        (DEBIAN_FASHION / name).is_file()
        for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    ),
    reason=f"Fashion-MNIST is not installed under {DEBIAN_FASHION} (apt-get install dataset-fashion-mnist)",
)
def test_debian_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", SYSTEM_DATA_DIR)
    found = data.find_files("fashion-mnist", download=False)
    assert {path.parent for path in found.values()} == {DEBIAN_FASHION}
    splits = data.load_splits("fashion-mnist", download=False)  # verifies the content digests
    assert splits["train"].images.shape == (55_000, 28, 28)
    assert splits["valid"].images.shape == (5_000, 28, 28)
    assert splits["test"].images.shape == (10_000, 28, 28)
    full_train = np.concatenate([splits["train"].labels, splits["valid"].labels])
    np.testing.assert_array_equal(np.bincount(full_train), np.full(10, 6_000))
    np.testing.assert_array_equal(np.bincount(splits["test"].labels), np.full(10, 1_000))
    assert splits["test"].labels.dtype == np.int64
    semi = data.load("fashion-mnist", "valid", download=False, valid_size=data.SEMISUPERVISED_VALID_SIZE)
    assert semi.images.shape == (10_000, 28, 28)
