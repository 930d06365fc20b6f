"""`fair data prepare` end to end: small archives in each dataset's real layout, served on loopback.

The loopback server speaks Range requests and can drop a connection halfway or serve corrupt bytes;
every source URL is redirected to it with --mirror, and each served file's checksum is patched to the
test archive's, so nothing here reaches the internet.
"""
from __future__ import annotations

import hashlib
import io
import json
import socket
import struct
import tarfile
import threading
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fair.cli import main
from fair.data import archives, disk, download, mat, recipe
from fair.data import sources
from fair.data.catalog import dataset_base, get_spec
from fair.errors import FairError


# ------------------------------------------------------------------------------------------ the server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server.owner
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.path in srv.drop_once:            # half the bytes, then hang up
            srv.drop_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


class Mirror:
    """A threaded loopback HTTP server: files by path, a log of (path, Range header) per request."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drop_once: set[str] = set()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                "FAIR_DATA_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    m = Mirror()
    yield m
    m.close()


def publish(m: Mirror, monkeypatch, dataset: str, name: str, data: bytes, served: bytes | None = None,
            serve: bool = True) -> None:
    """Serve `data` as <dataset>/<name> and make it the file's published checksum (sha256) and size."""
    remote = sources.SOURCES[dataset].remote(name)
    monkeypatch.setattr(remote, "checksum", "sha256:" + hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(remote, "size", len(data))
    if serve:
        m.files[f"/{dataset}/{name}"] = data if served is None else served


def run(*args) -> int:
    return main(["data", *args])


def prep(m: Mirror, root: Path, name: str) -> int:
    return run("prepare", name, "--root", str(root), "--mirror", m.url, "--quiet")


# ------------------------------------------------------------------------------------------ archives


def jpg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), (seed * 37) % 256, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def tar_gz(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def mat_v5(var: str, values) -> bytes:
    """A compressed MATLAB v5 file with one double row vector (as Flowers' imagelabels.mat)."""
    def el(t, payload):
        return struct.pack("<II", t, len(payload)) + payload + b"\0" * (-len(payload) % 8)
    arr = np.asarray(values, "<f8")
    matrix = el(14, el(6, struct.pack("<II", 6, 0)) + el(5, struct.pack("<ii", 1, len(arr)))
                + el(1, var.encode()) + el(9, arr.tobytes()))
    header = b"MATLAB 5.0 MAT-file, written by the tests".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    packed = zlib.compress(matrix)
    return header + struct.pack("<II", 15, len(packed)) + packed


def images(prefix: str, names: list[str], seed: int = 0) -> dict[str, bytes]:
    return {f"{prefix}{n}": jpg(seed + i) for i, n in enumerate(names)}


def serve_dtd(m, mp, drop=False, served=None):
    entries = {}
    for c in ("banded", "blotchy"):
        entries.update(images(f"dtd/images/{c}/", [f"{c}_{i:04d}.jpg" for i in range(5)], len(entries)))
    entries["dtd/labels/labels_joint_anno.txt"] = b"banded/banded_0000.jpg banded\n"
    entries["dtd/imdb/imdb.mat"] = b"not used"
    data = tar_gz(entries)
    publish(m, mp, "dtd", "dtd-r1.0.1.tar.gz", data, served)
    if drop:
        m.drop_once.add("/dtd/dtd-r1.0.1.tar.gz")
    return data


def serve_pets(m, mp, served=None):
    names = [f"Abyssinian_{i}" for i in range(1, 6)] + [f"great_pyrenees_{i}" for i in range(1, 6)]
    imgs = tar_gz(images("images/", [f"{n}.jpg" for n in names]))
    lines = {n: f"{n} {1 if n.startswith('Aby') else 2} {1 if n.startswith('Aby') else 2} 1" for n in names}
    ann = tar_gz({"annotations/list.txt": b"#Image CLASS-ID SPECIES BREED ID\n",
                  "annotations/trainval.txt": "\n".join(lines[n] for n in names if int(n[-1]) <= 3).encode(),
                  "annotations/test.txt": "\n".join(lines[n] for n in names if int(n[-1]) > 3).encode()})
    publish(m, mp, "oxford_pets", "images.tar.gz", imgs, served)
    publish(m, mp, "oxford_pets", "annotations.tar.gz", ann)


def serve_flowers(m, mp):
    publish(m, mp, "flowers102", "102flowers.tgz",
            tar_gz(images("jpg/", [f"image_{i:05d}.jpg" for i in range(1, 11)])))
    publish(m, mp, "flowers102", "imagelabels.mat", mat_v5("labels", [1] * 5 + [2] * 5))


def serve_eurosat(m, mp):
    entries, split = {}, {"train": [], "val": [], "test": []}
    for label, c in enumerate(("AnnualCrop", "Forest")):
        for i in range(1, 6):
            entries[f"2750/{c}/{c}_{i}.jpg"] = jpg(i + 10 * label)
            part = "train" if i <= 2 else "val" if i == 3 else "test"
            split[part].append([f"{c}/{c}_{i}.jpg", label, sources.EUROSAT_NEW_CNAMES[c]])
    publish(m, mp, "eurosat", "EuroSAT.zip", zip_bytes(entries))
    m.files["/eurosat/split_zhou_EuroSAT.json"] = json.dumps(split).encode()   # CoOp's file is served here


def serve_caltech(m, mp):
    entries = {}
    for c in ("accordion", "airplanes", "BACKGROUND_Google", "Faces_easy"):
        entries.update(images(f"101_ObjectCategories/{c}/", [f"image_{i:04d}.jpg" for i in range(1, 6)]))
    publish(m, mp, "caltech101", "caltech-101.zip",
            zip_bytes({"caltech-101/101_ObjectCategories.tar.gz": tar_gz(entries),
                       "caltech-101/Annotations.tar": b"", "caltech-101/show_annotation.m": b""}))


def serve_food(m, mp):
    entries = {"food-101/meta/classes.txt": b"apple_pie\nbaby_back_ribs\n", "food-101/README.txt": b""}
    for c in ("apple_pie", "baby_back_ribs"):
        entries.update(images(f"food-101/images/{c}/", [f"{100 + i}.jpg" for i in range(5)]))
    publish(m, mp, "food101", "food-101.tar.gz", tar_gz(entries))


def serve_sun(m, mp):
    entries = {"SUN397/ClassName.txt": b"/a/abbey\n/b/bakery/shop\n", "SUN397/README.txt": b""}
    lists = {"Training_01.txt": [], "Testing_01.txt": []}
    for cls in ("a/abbey", "b/bakery/shop"):
        for i in range(5):
            entries[f"SUN397/{cls}/sun_{i}.jpg"] = jpg(i + len(entries))
            lists["Training_01.txt" if i < 3 else "Testing_01.txt"].append(f"/{cls}/sun_{i}.jpg")
    publish(m, mp, "sun397", "SUN397.tar.gz", tar_gz(entries))
    publish(m, mp, "sun397", "Partitions.zip", zip_bytes(
        {"ClassName.txt": b"/a/abbey\n/b/bakery/shop\n", **{k: "\n".join(v).encode() for k, v in lists.items()}}))


def serve_ucf(m, mp):
    frames, train, test = {}, [], []
    for k, (action, renamed) in enumerate((("ApplyEyeMakeup", "Apply_Eye_Makeup"), ("Archery", "Archery"))):
        for g in range(1, 6):
            frames[f"UCF-101-midframes/{renamed}/v_{action}_g{g:02d}_c01.jpg"] = jpg(g + 10 * k)
            (train if g <= 3 else test).append(f"{action}/v_{action}_g{g:02d}_c01.avi" + (f" {k + 1}" if g <= 3 else ""))
    publish(m, mp, "ucf101", "UCF-101-midframes.zip", zip_bytes(frames))
    publish(m, mp, "ucf101", "UCF101TrainTestSplits-RecognitionTask.zip", zip_bytes({
        "ucfTrainTestlist/classInd.txt": b"1 ApplyEyeMakeup\n2 Archery\n",
        "ucfTrainTestlist/trainlist01.txt": "\n".join(train).encode(),
        "ucfTrainTestlist/testlist01.txt": "\n".join(test).encode()}))


ZHOU_CASES = {   # dataset: (serve, class names the reader must yield, how the split was made)
    "dtd": (serve_dtd, ["banded", "blotchy"], "generated"),
    "oxford_pets": (serve_pets, ["abyssinian", "great pyrenees"], "generated"),
    "flowers102": (serve_flowers, ["pink primrose", "hard-leaved pocket orchid"], "generated"),
    "eurosat": (serve_eurosat, ["Annual Crop Land", "Forest"], "downloaded"),
    "caltech101": (serve_caltech, ["accordion", "airplane"], "generated"),
    "food101": (serve_food, ["apple pie", "baby back ribs"], "generated"),
    "sun397": (serve_sun, ["abbey", "shop bakery"], "generated"),
    "ucf101": (serve_ucf, ["Apply Eye Makeup", "Archery"], "generated"),
}


def classnames(name: str, root: Path) -> list[str]:
    spec = get_spec(name)
    return spec.reader(spec, dataset_base(spec, str(root))).classnames


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("name", list(ZHOU_CASES))
def test_zhou_datasets_end_to_end(name, mirror, monkeypatch, tmp_path, capsys):
    serve, expected, made = ZHOU_CASES[name]
    serve(mirror, monkeypatch)
    assert prep(mirror, tmp_path, name) == 0
    table = capsys.readouterr().out
    assert name in table and " ok " in table
    assert run("check", name, "--root", str(tmp_path), "--read") == 0
    assert "2 classes" in capsys.readouterr().out
    assert classnames(name, tmp_path) == expected
    base = dataset_base(get_spec(name), str(tmp_path))
    split_file = base / get_spec(name).required[1]
    meta = json.loads(Path(f"{split_file}.meta.json").read_text())
    assert meta["made"] == made and (made == "downloaded" or meta["seed"] == sources.SEED)
    assert not any((base / recipe.DOWNLOAD_DIR).glob("*")) and not list(base.glob(".staging-*"))
    data = json.loads(split_file.read_text())
    assert data["train"] and data["val"] and data["test"]


def test_official_split_datasets_fgvc_aircraft_and_cub(mirror, monkeypatch, tmp_path, capsys):
    ids = [f"{i:07d}" for i in range(1, 7)]
    variant = {i: ("707-320" if n % 2 else "A320") for n, i in enumerate(ids)}
    entries = images("fgvc-aircraft-2013b/data/images/", [f"{i}.jpg" for i in ids])
    entries["fgvc-aircraft-2013b/data/variants.txt"] = b"707-320\nA320\n"
    for part, chunk in (("train", ids[:2]), ("val", ids[2:4]), ("test", ids[4:])):
        entries[f"fgvc-aircraft-2013b/data/images_variant_{part}.txt"] = "".join(
            f"{i} {variant[i]}\n" for i in chunk).encode()
    entries["fgvc-aircraft-2013b/README.md"] = b"readme"
    publish(mirror, monkeypatch, "fgvc_aircraft", "fgvc-aircraft-2013b.tar.gz", tar_gz(entries))

    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    cub = {"attributes.txt": b"1 has_bill_shape::curved\n"}
    rows = []
    for k in range(1, 9):
        rel = f"{classes[(k - 1) % 2]}/img_{k}.jpg"
        cub[f"CUB_200_2011/images/{rel}"] = jpg(k)
        rows.append((k, rel, (k - 1) % 2 + 1, 1 if k <= 6 else 0))
    cub["CUB_200_2011/images.txt"] = "".join(f"{k} {rel}\n" for k, rel, _, _ in rows).encode()
    cub["CUB_200_2011/image_class_labels.txt"] = "".join(f"{k} {c}\n" for k, _, c, _ in rows).encode()
    cub["CUB_200_2011/train_test_split.txt"] = "".join(f"{k} {t}\n" for k, _, _, t in rows).encode()
    cub["CUB_200_2011/classes.txt"] = "".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)).encode()
    publish(mirror, monkeypatch, "cub200", "CUB_200_2011.tgz", tar_gz(cub))

    assert run("prepare", "fgvc_aircraft", "cub200", "--root", str(tmp_path), "--mirror", mirror.url, "--quiet") == 0
    table = capsys.readouterr().out.splitlines()
    assert [ln.split()[:6] for ln in table[1:3]] == [["fgvc_aircraft", "ok", "2", "2", "2", "2"],
                                                       ["cub200", "ok", "2", "6", "-", "2"]]
    assert all(" none yet " in ln for ln in table[1:3])                     # descriptions: not made yet
    assert table[3].startswith("no descriptions yet for fgvc_aircraft, cub200: `fair descriptions import")
    for name in ("fgvc_aircraft", "cub200"):
        assert run("check", name, "--root", str(tmp_path), "--read") == 0
    assert classnames("cub200", tmp_path) == ["Black footed Albatross", "Laysan Albatross"]
    assert not (tmp_path / "fgvc_aircraft" / "README.md").exists()          # only data/ is kept


def test_stanford_cars_says_what_to_place_then_completes(mirror, monkeypatch, tmp_path, capsys):
    train = tar_gz(images("cars_train/", [f"{i:05d}.jpg" for i in range(1, 7)]))
    test = tar_gz(images("cars_test/", [f"{i:05d}.jpg" for i in range(1, 5)]))
    publish(mirror, monkeypatch, "stanford_cars", "cars_train.tgz", train, serve=False)
    publish(mirror, monkeypatch, "stanford_cars", "cars_test.tgz", test, serve=False)
    names = ["2012 Acura TL Sedan", "2012 BMW M3 coupe"]
    split = {"train": [[f"cars_train/{i:05d}.jpg", i % 2, names[i % 2]] for i in range(1, 5)],
             "val": [[f"cars_train/{i:05d}.jpg", i % 2, names[i % 2]] for i in range(5, 7)],
             "test": [[f"cars_test/{i:05d}.jpg", i % 2, names[i % 2]] for i in range(1, 5)]}
    mirror.files["/stanford_cars/split_zhou_StanfordCars.json"] = json.dumps(split).encode()

    assert prep(mirror, tmp_path, "stanford_cars") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fair: error: stanford_cars needs files")
    assert "cars_train.tgz, cars_test.tgz" in err and str(tmp_path / "stanford_cars") in err
    assert mirror.requests == []                                              # nothing fetched before the files are there

    (tmp_path / "stanford_cars" / "cars_train.tgz").write_bytes(train)
    (tmp_path / "stanford_cars" / "cars_test.tgz").write_bytes(test)
    assert prep(mirror, tmp_path, "stanford_cars") == 0
    assert run("check", "stanford_cars", "--root", str(tmp_path), "--read") == 0
    assert classnames("stanford_cars", tmp_path) == names[::-1] or classnames("stanford_cars", tmp_path) == names
    assert (tmp_path / "stanford_cars" / "cars_train.tgz").exists()          # the user's files are left alone


def test_birdsnap_metadata_then_the_images_from_its_script(mirror, monkeypatch, tmp_path, capsys):
    species = "id\tcommon\tscientific\tdir\n1\tAcadian Flycatcher\tEmpidonax virescens\tAcadian_Flycatcher\n" \
              "2\tAmerican Coot\tFulica americana\tAmerican_Coot\n"
    publish(mirror, monkeypatch, "birdsnap", "birdsnap.tgz", tar_gz({
        "birdsnap/species.txt": species.encode(), "birdsnap/images.txt": b"url\tmd5\tpath\n",
        "birdsnap/test_images.txt": b"path\nAcadian_Flycatcher/3.jpg\nAmerican_Coot/3.jpg\n",
        "birdsnap/get_birdsnap.py": b"# downloads the images\n"}))
    assert prep(mirror, tmp_path, "birdsnap") == 2
    err = capsys.readouterr().err
    assert "get_birdsnap.py" in err and len(err.strip().splitlines()) == 1
    for d in ("Acadian_Flycatcher", "American_Coot"):             # what the script would have fetched
        for i in range(1, 4):
            path = tmp_path / "birdsnap" / "download" / "images" / d / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpg(i))
    mirror.requests.clear()
    assert prep(mirror, tmp_path, "birdsnap") == 0 and mirror.requests == []
    assert capsys.readouterr().out.splitlines()[1].split()[:6] == ["birdsnap", "ok", "2", "4", "-", "2"]
    assert classnames("birdsnap", tmp_path) == ["Acadian Flycatcher", "American Coot"]


def test_resisc45_from_a_placed_archive(mirror, tmp_path, capsys):
    assert prep(mirror, tmp_path, "resisc45") == 2
    assert "NWPU-RESISC45.rar" in capsys.readouterr().err
    entries = {}
    for c in ("airplane", "beach"):
        entries.update(images(f"NWPU-RESISC45/{c}/", [f"{c}_{i:03d}.jpg" for i in range(1, 6)]))
    (tmp_path / "NWPU-RESISC45").mkdir(exist_ok=True)
    (tmp_path / "NWPU-RESISC45" / "NWPU-RESISC45.zip").write_bytes(zip_bytes(entries))
    assert prep(mirror, tmp_path, "resisc45") == 0
    assert classnames("resisc45", tmp_path) == ["airplane", "beach"]
    assert run("check", "resisc45", "--root", str(tmp_path), "--read") == 0


def test_stanford_cars_split_made_from_the_devkit(mirror, monkeypatch, tmp_path):
    sio = pytest.importorskip("scipy.io")

    def annos(n):
        rec = np.zeros((1, n), dtype=[("fname", "O"), ("class", "O")])
        for i in range(n):
            rec[0, i] = (f"{i + 1:05d}.jpg", np.array([[i % 2 + 1]], dtype=np.uint8))
        buf = io.BytesIO()
        sio.savemat(buf, {"annotations": rec})
        return buf.getvalue()
    meta = np.empty((1, 2), dtype=object)
    meta[0, 0], meta[0, 1] = "Acura TL Sedan 2012", "BMW M3 Coupe 2012"
    buf = io.BytesIO()
    sio.savemat(buf, {"class_names": meta})
    files = {"cars_train.tgz": tar_gz(images("cars_train/", [f"{i:05d}.jpg" for i in range(1, 11)])),
             "cars_test.tgz": tar_gz(images("cars_test/", [f"{i:05d}.jpg" for i in range(1, 5)])),
             "car_devkit.tgz": tar_gz({"devkit/cars_meta.mat": buf.getvalue(), "devkit/cars_train_annos.mat": annos(10)}),
             "cars_test_annos_withlabels.mat": annos(4)}
    (tmp_path / "stanford_cars").mkdir()
    for name, data in files.items():
        publish(mirror, monkeypatch, "stanford_cars", name, data, serve=False)
        (tmp_path / "stanford_cars" / name).write_bytes(data)
    assert prep(mirror, tmp_path, "stanford_cars") == 0          # CoOp's split is not on this mirror: made
    assert classnames("stanford_cars", tmp_path) == ["2012 Acura TL Sedan", "2012 BMW M3 Coupe"]
    split = json.loads((tmp_path / "stanford_cars" / "split_zhou_StanfordCars.json").read_text())
    assert [len(split[p]) for p in ("train", "val", "test")] == [8, 2, 4]


def test_interrupted_download_resumes_with_range(mirror, monkeypatch, tmp_path):
    data = serve_dtd(mirror, monkeypatch, drop=True)
    monkeypatch.setattr(download, "CHUNK", 64)          # so what arrived before the hang-up is on disk
    assert prep(mirror, tmp_path, "dtd") == 0
    archive = [r for r in mirror.requests if r[0].endswith(".tar.gz")]
    assert len(archive) == 2 and archive[0][1] is None
    start = int(archive[1][1].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= len(data) // 2 and start % 64 == 0
    state = json.loads((tmp_path / "dtd" / recipe.STATE_FILE).read_text())
    assert state["files"]["dtd-r1.0.1.tar.gz"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert state["complete"]


def test_corrupt_archive_is_moved_aside_with_one_line(mirror, monkeypatch, tmp_path, capsys):
    good = tar_gz(images("images/", ["Abyssinian_1.jpg"]))
    serve_pets(mirror, monkeypatch, served=good[:-10] + b"0123456789")
    assert prep(mirror, tmp_path, "oxford_pets") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match its checksum" in err and ".corrupt" in err
    assert (tmp_path / "oxford_pets" / recipe.DOWNLOAD_DIR / "images.tar.gz.corrupt").is_file()
    assert not (tmp_path / "oxford_pets" / "images").exists()


def test_second_run_downloads_nothing(mirror, monkeypatch, tmp_path, capsys):
    serve_dtd(mirror, monkeypatch)
    assert prep(mirror, tmp_path, "dtd") == 0
    before = (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").read_text()
    mirror.requests.clear()
    capsys.readouterr()
    assert prep(mirror, tmp_path, "dtd") == 0
    assert mirror.requests == [] and "already prepared" in capsys.readouterr().out
    assert (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").read_text() == before

    # the images removed by accident: only what is gone is fetched again
    import shutil
    shutil.rmtree(tmp_path / "dtd" / "images")
    assert prep(mirror, tmp_path, "dtd") == 0
    assert [r[0] for r in mirror.requests] == ["/dtd/dtd-r1.0.1.tar.gz"]
    assert (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").read_text() == before


def test_full_disk_is_refused_before_downloading(mirror, monkeypatch, tmp_path, capsys):
    serve_dtd(mirror, monkeypatch)
    monkeypatch.setattr(disk, "free_bytes", lambda path: 1000)
    assert prep(mirror, tmp_path, "dtd") == 2
    err = capsys.readouterr().err
    assert "not enough disk space" in err and mirror.requests == []


def test_disk_filling_up_keeps_the_partial_download(mirror, monkeypatch, tmp_path, capsys):
    serve_dtd(mirror, monkeypatch)
    import builtins
    real_open = builtins.open

    def full_open(file, mode="r", *a, **k):
        fh = real_open(file, mode, *a, **k)
        if str(file).endswith(".part"):
            def write(_):
                raise OSError(28, "No space left on device")
            fh.write = write
        return fh
    monkeypatch.setattr(builtins, "open", full_open)
    assert prep(mirror, tmp_path, "dtd") == 2
    err = capsys.readouterr().err
    assert "disk filled up" in err and "next run continues" in err


def test_archive_without_the_expected_layout(mirror, monkeypatch, tmp_path, capsys):
    data = tar_gz(images("textures/", ["a.jpg"]))
    publish(mirror, monkeypatch, "dtd", "dtd-r1.0.1.tar.gz", data)
    assert prep(mirror, tmp_path, "dtd") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not contain 'dtd/images'" in err and "textures" in err
    assert (tmp_path / "dtd" / recipe.DOWNLOAD_DIR / "dtd-r1.0.1.tar.gz.corrupt").is_file()


def test_unreachable_source_names_the_url_and_the_way_out(monkeypatch, tmp_path, capsys):
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    from tune.ray_session import free_port
    port = free_port()                                                # nothing listens there
    monkeypatch.setattr(download, "ATTEMPTS", 1)
    assert run("prepare", "cub200", "--root", str(tmp_path), "--mirror", f"http://127.0.0.1:{port}", "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"http://127.0.0.1:{port}/cub200/CUB_200_2011.tgz" in err and "put it in" in err


def test_all_reports_every_dataset_in_one_table(mirror, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(download, "ATTEMPTS", 1)
    serve_dtd(mirror, monkeypatch)
    assert run("prepare", "all", "--root", str(tmp_path), "--mirror", mirror.url, "--quiet") == 2
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 15 and "dtd " in out and "no descriptions yet for dtd:" in out
    assert "12 of 13 datasets are not ready" in err and len(err.strip().splitlines()) == 1


def test_extraction_refuses_paths_outside_the_folder(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(tar_gz({"../evil.txt": b"x"}))
    with pytest.raises(FairError, match="outside"):
        archives.extract_archive(bad, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    badzip = tmp_path / "bad.zip"
    badzip.write_bytes(zip_bytes({"/abs.txt": b"x", "a/../../evil.txt": b"x"}))
    with pytest.raises(FairError, match="outside"):
        archives.extract_archive(badzip, tmp_path / "out2")


def test_mat_reader_reads_scipy_files_too(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    for compress in (False, True):
        path = tmp_path / f"labels{compress}.mat"
        scipy_io.savemat(path, {"labels": np.array([[3, 1, 2]], dtype=np.uint8), "other": np.eye(2)},
                         do_compression=compress)
        assert mat.read_mat_array(path, "labels").tolist() == [3, 1, 2]
    (tmp_path / "ours.mat").write_bytes(mat_v5("labels", [1, 2]))
    assert scipy_io.loadmat(tmp_path / "ours.mat")["labels"].ravel().tolist() == [1, 2]


def test_every_paper_dataset_has_a_recipe_and_no_other():
    """fair.data.catalog's missing-data hint names `fair data prepare` for exactly the paper datasets."""
    from fair.data.catalog import PAPER_DATASETS
    assert sorted(sources.SOURCES) == sorted(PAPER_DATASETS)
