"""Where each of the 13 datasets comes from and how `fair data prepare` lays it out (its recipe).

One `Source` per dataset: the files (official URLs; checksums as published by the dataset or by
torchvision, which checks them with md5), the recipe that extracts them into the catalog's layout
(`fair.data.catalog`) with a `fair.data.recipe.Job` and makes the split file, and what a user must fetch
by hand where no source is reachable. Splits follow CoOp (Zhou et al., "Learning to Prompt for
Vision-Language Models"): its `split_zhou_*.json` is fetched from the Google Drive file CoOp's DATASETS.md
links; when that fails it is made by CoOp's own rule from the official metadata with a fixed seed (same
proportions and class names; other images per part, since CoOp's file came from an unrecorded random
state), and the split's sidecar `<split>.meta.json` says which.
"""
from __future__ import annotations

import importlib.util
import random
import re
from collections import defaultdict
from pathlib import Path

from fair.data.images import is_image
from fair.data.mat import read_mat_array
from fair.data.recipe import Job, Remote, Source
from fair.errors import FairError

SEED = 1   # Python `random.Random(SEED)` for generated splits (CoOp's configs use seed 1)


def gdrive(file_id: str) -> str:
    """The direct-download URL of a public Google Drive file (no confirmation page for files < 100 MB)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def coop_split(name: str, file_id: str) -> Remote:
    """CoOp's split file on Google Drive: optional, since the recipe can make it from the metadata."""
    return Remote(name, [gdrive(file_id)], optional=True,
                  how=f"CoOp's split, https://drive.google.com/file/d/{file_id}/view")


# ------------------------------------------------------------------------------------------ CoOp's split rules


def _images(folder: Path) -> list[str]:
    """Names of the image files directly in `folder`, sorted (hidden files skipped)."""
    return sorted(p.name for p in folder.iterdir() if is_image(p))


def read_and_split(image_dir: Path, rng: random.Random, p_trn: float = 0.5, p_val: float = 0.2,
                   ignored: tuple[str, ...] = (), new_cnames: dict[str, str] | None = None) -> dict:
    """CoOp's `DTD.read_and_split_data`: per class folder (sorted), shuffle, 50% train / 20% val / rest test."""
    categories = sorted(c.name for c in image_dir.iterdir()
                        if c.is_dir() and not c.name.startswith(".") and c.name not in ignored)
    split = {"train": [], "val": [], "test": []}
    for label, cat in enumerate(categories):
        ims = [f"{cat}/{n}" for n in _images(image_dir / cat)]
        rng.shuffle(ims)
        n_trn, n_val = round(len(ims) * p_trn), round(len(ims) * p_val)
        cname = (new_cnames or {}).get(cat, cat)
        for part, chunk in (("train", ims[:n_trn]), ("val", ims[n_trn:n_trn + n_val]), ("test", ims[n_trn + n_val:])):
            split[part] += [[p, label, cname] for p in chunk]
    return split


def split_trainval(items: list[list], rng: random.Random, p_val: float = 0.2) -> tuple[list, list]:
    """CoOp's `OxfordPets.split_trainval`: per label, shuffle, the first 20% (rounded) go to val."""
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_label[item[1]].append(i)
    train, val = [], []
    for idxs in by_label.values():
        n_val = round(len(idxs) * p_val)
        rng.shuffle(idxs)
        for n, i in enumerate(idxs):
            (val if n < n_val else train).append(items[i])
    return train, val


def _with_trainval(trainval: list, test: list) -> dict:
    train, val = split_trainval(trainval, random.Random(SEED))
    return {"train": train, "val": val, "test": test}


# ------------------------------------------------------------------------------------------ recipes


CALTECH_IGNORED = ("BACKGROUND_Google", "Faces_easy")
CALTECH_NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
EUROSAT_NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake"}
# Flowers102 class names by label 1..102: the official release has none; these are those of CoOp's
# cat_to_name.json (the names every paper of this family prompts with).
FLOWERS_NAMES = [
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
    "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon", "colt's foot",
    "king protea", "spear thistle", "yellow iris", "globe-flower", "purple coneflower", "peruvian lily",
    "balloon flower", "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger",
    "grape hyacinth", "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke", "sweet william",
    "carnation", "garden phlox", "love in the mist", "mexican aster", "alpine sea holly", "ruby-lipped cattleya",
    "cape flower", "great masterwort", "siam tulip", "lenten rose", "barbeton daisy", "daffodil", "sword lily",
    "poinsettia", "bolero deep blue", "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion",
    "petunia", "wild pansy", "primula", "sunflower", "pelargonium", "bishop of llandaff", "gaura", "geranium",
    "orange dahlia", "pink-yellow dahlia", "cautleya spicata", "japanese anemone", "black-eyed susan",
    "silverbush", "californian poppy", "osteospermum", "spring crocus", "bearded iris", "windflower",
    "tree poppy", "gazania", "azalea", "water lily", "rose", "thorn apple", "morning glory", "passion flower",
    "lotus", "toad lily", "anthurium", "frangipani", "clematis", "hibiscus", "columbine", "desert-rose",
    "tree mallow", "magnolia", "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss",
    "foxglove", "bougainvillea", "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower",
    "trumpet creeper", "blackberry lily"]


def _caltech101(job: Job) -> None:
    job.unpack("caltech-101.zip", {"101_ObjectCategories": "101_ObjectCategories"},
               inner="**/101_ObjectCategories.tar.gz")
    job.split_or(lambda: read_and_split(job.base / "101_ObjectCategories", random.Random(SEED),
                                        ignored=CALTECH_IGNORED, new_cnames=CALTECH_NEW_CNAMES), SEED)


def _dtd(job: Job) -> None:
    job.unpack("dtd-r1.0.1.tar.gz", {"dtd/images": "images", "dtd/labels": "labels"})
    job.split_or(lambda: read_and_split(job.base / "images", random.Random(SEED)), SEED)


def _eurosat(job: Job) -> None:
    job.unpack("EuroSAT.zip", {"**/2750": "2750"})
    job.split_or(lambda: read_and_split(job.base / "2750", random.Random(SEED),
                                        new_cnames=EUROSAT_NEW_CNAMES), SEED)


def _food101(job: Job) -> None:
    job.unpack("food-101.tar.gz", {"food-101/images": "images", "food-101/meta": "meta"})
    job.split_or(lambda: read_and_split(job.base / "images", random.Random(SEED)), SEED)


def _pets_items(base: Path, list_file: str) -> list[list]:
    """CoOp's `OxfordPets.read_data`: `Abyssinian_100 1 1 1` -> [Abyssinian_100.jpg, 0, abyssinian]."""
    items = []
    for line in (base / "annotations" / list_file).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        imname, label = line.split()[:2]
        breed = "_".join(imname.split("_")[:-1]).lower()
        items.append([f"{imname}.jpg", int(label) - 1, breed])
    return items


def _oxford_pets(job: Job) -> None:
    job.unpack("images.tar.gz", {"images": "images"})
    job.unpack("annotations.tar.gz", {"annotations": "annotations"})
    job.split_or(lambda: _with_trainval(_pets_items(job.base, "trainval.txt"), _pets_items(job.base, "test.txt")),
                 SEED)


def _flowers_split(base: Path) -> dict:
    """CoOp's `OxfordFlowers.read_data`: imagelabels.mat, per class shuffle, 50% / 20% / 30%."""
    rng = random.Random(SEED)
    by_label: dict[int, list[str]] = defaultdict(list)
    for i, lab in enumerate(read_mat_array(base / "imagelabels.mat", "labels").astype(int)):
        by_label[int(lab)].append(f"image_{i + 1:05d}.jpg")
    split = {"train": [], "val": [], "test": []}
    for label, ims in by_label.items():
        rng.shuffle(ims)
        n_trn, n_val = round(len(ims) * 0.5), round(len(ims) * 0.2)
        cname = FLOWERS_NAMES[label - 1]
        for part, chunk in (("train", ims[:n_trn]), ("val", ims[n_trn:n_trn + n_val]), ("test", ims[n_trn + n_val:])):
            split[part] += [[p, label - 1, cname] for p in chunk]
    return split


def _flowers102(job: Job) -> None:
    job.unpack("102flowers.tgz", {"jpg": "jpg"})
    job.place("imagelabels.mat")
    job.split_or(lambda: _flowers_split(job.base), SEED)


def _fgvc_aircraft(job: Job) -> None:
    job.unpack("fgvc-aircraft-2013b.tar.gz", {"fgvc-aircraft-2013b/data": "."})


def _cub200(job: Job) -> None:
    job.unpack("CUB_200_2011.tgz", {"CUB_200_2011": "."})


def _sun_items(base: Path, list_file: str, cname2lab: dict[str, int]) -> list[list]:
    """CoOp's `SUN397.read_data`: `/a/abbey/sun_x.jpg` -> [a/abbey/sun_x.jpg, label, abbey]; `b/bakery/shop` -> `shop bakery`."""
    items = []
    for line in (base / list_file).read_text().splitlines():
        if not line.strip():
            continue
        imname = line.strip()[1:]
        classname = imname.rsplit("/", 1)[0]
        items.append([imname, cname2lab[classname], " ".join(classname.split("/")[1:][::-1])])
    return items


def _sun_split(base: Path) -> dict:
    classes = [ln.strip()[1:] for ln in (base / "ClassName.txt").read_text().splitlines() if ln.strip()]
    cname2lab = {c: i for i, c in enumerate(classes)}
    return _with_trainval(_sun_items(base, "Training_01.txt", cname2lab), _sun_items(base, "Testing_01.txt", cname2lab))


def _sun397(job: Job) -> None:
    job.unpack("SUN397.tar.gz", {"SUN397": "SUN397"})
    job.unpack("Partitions.zip", {"**/ClassName.txt": "ClassName.txt", "**/Training_01.txt": "Training_01.txt",
                                  "**/Testing_01.txt": "Testing_01.txt"})
    job.split_or(lambda: _sun_split(job.base), SEED)


def _ucf_items(base: Path, list_file: str, cname2lab: dict[str, int]) -> list[list]:
    """CoOp's `UCF101.read_data`: `ApplyEyeMakeup/v_..._c01.avi 1` -> [Apply_Eye_Makeup/v_..._c01.jpg, 0, Apply_Eye_Makeup]."""
    items = []
    for line in (base / "ucfTrainTestlist" / list_file).read_text().splitlines():
        if not line.strip():
            continue
        action, filename = line.strip().split(" ")[0].split("/")
        renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
        items.append([f"{renamed}/{filename.replace('.avi', '.jpg')}", cname2lab[action], renamed])
    return items


def _ucf_split(base: Path) -> dict:
    cname2lab = {}
    for line in (base / "ucfTrainTestlist" / "classInd.txt").read_text().splitlines():
        if line.strip():
            label, classname = line.strip().split(" ")
            cname2lab[classname] = int(label) - 1
    return _with_trainval(_ucf_items(base, "trainlist01.txt", cname2lab), _ucf_items(base, "testlist01.txt", cname2lab))


def _ucf101(job: Job) -> None:
    job.unpack("UCF-101-midframes.zip", {"**/UCF-101-midframes": "UCF-101-midframes"})

    def make():
        job.unpack("UCF101TrainTestSplits-RecognitionTask.zip", {"**/ucfTrainTestlist": "ucfTrainTestlist"})
        return _ucf_split(job.base)
    job.split_or(make, SEED)


def _cars_items(base: Path, image_dir: str, anno_file: Path, meta_file: Path) -> list[list]:
    """CoOp's `StanfordCars.read_data` (needs scipy for the devkit's struct arrays): `... 2012` -> `2012 ...`."""
    from scipy.io import loadmat
    annos = loadmat(anno_file)["annotations"][0]
    meta = loadmat(meta_file)["class_names"][0]
    items = []
    for a in annos:
        label = int(a["class"][0, 0]) - 1
        names = str(meta[label][0]).split(" ")
        names.insert(0, names.pop(-1))
        items.append([f"{image_dir}/{a['fname'][0]}", label, " ".join(names)])
    return items


def _stanford_cars(job: Job) -> None:
    job.unpack("cars_train.tgz", {"cars_train": "cars_train"})
    job.unpack("cars_test.tgz", {"cars_test": "cars_test"})
    if job.fetch_split():
        return
    split_url = job.source.remote(job.split_name).how
    have = [job.done(n) or job.placed(job.source.remote(n)) is not None
            for n in ("car_devkit.tgz", "cars_test_annos_withlabels.mat")]
    have.append(importlib.util.find_spec("scipy") is not None)
    if not all(have):
        raise FairError(f"stanford_cars: the split file could not be downloaded; put {job.split_name} "
                        f"({split_url}) in {job.base}/, or put car_devkit.tgz and cars_test_annos_withlabels.mat "
                        f"there (and pip install scipy) to make it, then rerun")
    job.unpack("car_devkit.tgz", {"devkit": "devkit"})
    job.place("cars_test_annos_withlabels.mat")
    base = job.base
    meta = base / "devkit" / "cars_meta.mat"
    job.write_split(_with_trainval(_cars_items(base, "cars_train", base / "devkit" / "cars_train_annos.mat", meta),
                                   _cars_items(base, "cars_test", base / "cars_test_annos_withlabels.mat", meta)),
                    SEED)


def _birdsnap(job: Job) -> None:
    job.unpack("birdsnap.tgz", {"birdsnap": "."})
    images = job.base / "download" / "images"
    if not images.is_dir() or not any(images.iterdir()):
        raise FairError(f"birdsnap: the metadata is in {job.base}, but its ~50k images are only listed as Flickr "
                        f"URLs: run `cd {job.base} && python get_birdsnap.py` (it downloads them into "
                        f"download/images/; some have disappeared), then rerun `fair data prepare birdsnap`")


def _resisc45(job: Job) -> None:
    def has_classes() -> bool:
        return job.base.is_dir() and any(p.is_dir() and not p.name.startswith(".") and any(is_image(f) for f in p.iterdir())
                                         for p in job.base.iterdir())
    if has_classes():
        return
    for name in ("NWPU-RESISC45.zip", "NWPU-RESISC45.rar"):
        if job.done(name) or job.placed(job.source.remote(name)) is not None:
            job.unpack(name, {"**/NWPU-RESISC45": "."})
            return
    rar = job.source.remote("NWPU-RESISC45.rar")
    raise FairError(f"resisc45 cannot be downloaded automatically: get NWPU-RESISC45.rar ({rar.how}) and put it "
                    f"in {job.base}/ (or extract it there yourself: {job.base}/<class>/*.jpg, 45 classes), "
                    f"then rerun `fair data prepare resisc45`")


# ------------------------------------------------------------------------------------------ the table


_OX = "https://www.robots.ox.ac.uk/~vgg/data"
_RULE = ("CoOp's rule (DTD.read_and_split_data): per class folder, sorted, shuffled with Python random seed {s}; "
         "50% train, 20% val, rest test{extra}")
_TRAINVAL = ("CoOp's rule: the official {what} lists; 20% of each class of the official train part goes to val "
             "(OxfordPets.split_trainval, Python random seed {s})")

SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("caltech101", "https://data.caltech.edu/records/mzrjq-6wc02", [
        Remote("caltech-101.zip", ["https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip"],
               "md5:3138e1922a9193bfa496528edbbc45d0", 137_000_000),
        coop_split("split_zhou_Caltech101.json", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN")],
        _caltech101, _RULE.format(s=SEED, extra="; BACKGROUND_Google and Faces_easy left out; airplanes, Faces, "
                                                "Leopards, Motorbikes renamed airplane, face, leopard, motorbike")),
    Source("dtd", f"{_OX}/dtd/", [
        Remote("dtd-r1.0.1.tar.gz", [f"{_OX}/dtd/download/dtd-r1.0.1.tar.gz"],
               "md5:fff73e5086ae6bdbea199a49dfb8a4c1", 625_000_000),
        coop_split("split_zhou_DescribableTextures.json", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x")],
        _dtd, _RULE.format(s=SEED, extra="")),
    Source("eurosat", "https://github.com/phelber/eurosat", [
        Remote("EuroSAT.zip", ["https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                               "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
                               "http://madm.dfki.de/files/sentinel/EuroSAT.zip"],
               "md5:c8fa014336c82ac7804f0398fcb19387", 94_000_000),
        coop_split("split_zhou_EuroSAT.json", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o")],
        _eurosat, _RULE.format(s=SEED, extra="; class folders renamed as CoOp's NEW_CNAMES (e.g. AnnualCrop -> "
                                             "Annual Crop Land)")),
    Source("fgvc_aircraft", f"{_OX}/fgvc-aircraft/", [
        Remote("fgvc-aircraft-2013b.tar.gz", [f"{_OX}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"],
               None, 2_750_000_000)],
        _fgvc_aircraft, "official: images_variant_{train,val,test}.txt (variant level, 100 classes)"),
    Source("flowers102", f"{_OX}/flowers/102/", [
        Remote("102flowers.tgz", [f"{_OX}/flowers/102/102flowers.tgz"], "md5:52808999861908f626f3c1f4e79d11fa",
               345_000_000),
        Remote("imagelabels.mat", [f"{_OX}/flowers/102/imagelabels.mat"], "md5:e0620be6f572b9609742df49c70aed4d"),
        coop_split("split_zhou_OxfordFlowers.json", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT")],
        _flowers102, f"CoOp's rule (OxfordFlowers.read_data): imagelabels.mat, per class shuffled with Python random "
                     f"seed {SEED}; 50% train, 20% val, rest test; names of CoOp's cat_to_name.json"),
    Source("food101", "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/", [
        Remote("food-101.tar.gz", ["http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz"],
               "md5:85eeb15f3717b99a5da872d97d918f87", 5_000_000_000),
        coop_split("split_zhou_Food101.json", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl")],
        _food101, _RULE.format(s=SEED, extra=" (CoOp ignores meta/train.json and test.json)")),
    Source("oxford_pets", f"{_OX}/pets/", [
        Remote("images.tar.gz", [f"{_OX}/pets/data/images.tar.gz"], "md5:5c4f3ee8e5d25df40f4fd59a7f44e54c",
               792_000_000),
        Remote("annotations.tar.gz", [f"{_OX}/pets/data/annotations.tar.gz"], "md5:95a8c909bbe2e81eed6a22bccdf3f68f",
               19_000_000),
        coop_split("split_zhou_OxfordPets.json", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs")],
        _oxford_pets, _TRAINVAL.format(what="annotations/trainval.txt and test.txt", s=SEED)),
    Source("stanford_cars", "https://ai.stanford.edu/~jkrause/cars/car_dataset.html", [
        Remote("cars_train.tgz", [], "md5:065e5b463ae28d29e77c1b4b166cfe61", 979_000_000, provides=["cars_train"],
               how="the original http://ai.stanford.edu/~jkrause/car196/cars_train.tgz is offline; copies exist, "
                   "e.g. on Kaggle (jessicali9530/stanford-cars-dataset) or academic torrents; the md5 is checked"),
        Remote("cars_test.tgz", [], "md5:4ce7ebf6a94d07f1952d94dd34c4d501", 977_000_000, provides=["cars_test"],
               how="same places as cars_train.tgz; the md5 is checked"),
        Remote("car_devkit.tgz", [], "md5:c3b158d763b6e2245038c8ad08e45376", optional=True, provides=["devkit"],
               how="only to make the split without CoOp's file"),
        Remote("cars_test_annos_withlabels.mat", [], "md5:b0a2b23655a3edd16d84508592a98d10", optional=True,
               how="only to make the split without CoOp's file"),
        coop_split("split_zhou_StanfordCars.json", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT")],
        _stanford_cars, _TRAINVAL.format(what="devkit cars_train_annos.mat / cars_test_annos_withlabels.mat", s=SEED)
        + "; class names with the year first", manual="cars_train.tgz and cars_test.tgz (no public source)"),
    Source("sun397", "https://vision.princeton.edu/projects/2010/SUN/", [
        Remote("SUN397.tar.gz", ["http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz"],
               "md5:8ca2778205c41d23104230ba66911c7a", 37_000_000_000),
        Remote("Partitions.zip", ["https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip"]),
        coop_split("split_zhou_SUN397.json", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq")],
        _sun397, _TRAINVAL.format(what="partition 1 (Training_01.txt / Testing_01.txt)", s=SEED)
        + "; class a/b/c named `c b` as CoOp"),
    Source("ucf101", "https://www.crcv.ucf.edu/data/UCF101.php", [
        Remote("UCF-101-midframes.zip", [gdrive("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O")],
               how="CoOp's middle frames, https://drive.google.com/file/d/10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O/view"),
        Remote("UCF101TrainTestSplits-RecognitionTask.zip",
               ["https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip",
                "https://www.crcv.ucf.edu/wp-content/uploads/2019/03/UCF101TrainTestSplits-RecognitionTask.zip"],
               optional=True),
        coop_split("split_zhou_UCF101.json", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y")],
        _ucf101, _TRAINVAL.format(what="ucfTrainTestlist trainlist01/testlist01", s=SEED)
        + "; CamelCase actions split with `_`", manual="UCF-101-midframes.zip when Google Drive refuses"),
    Source("cub200", "https://www.vision.caltech.edu/datasets/cub_200_2011/", [
        Remote("CUB_200_2011.tgz", ["https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"],
               "md5:97eceeb196236b17998738112f37df78", 1_150_000_000)],
        _cub200, "official: train_test_split.txt"),
    Source("birdsnap", "https://thomasberg.org/", [
        Remote("birdsnap.tgz", ["http://thomasberg.org/datasets/birdsnap/1.1/birdsnap.tgz"])],
        _birdsnap, "official: test_images.txt (the rest is train)",
        manual="the images: run get_birdsnap.py (Flickr URLs; some are gone)"),
    Source("resisc45", "https://gcheng-nwpu.github.io/#Datasets", [
        Remote("NWPU-RESISC45.rar", [], optional=True,
               how="OneDrive: https://1drv.ms/u/s!AmgKYzARBl5ca3HNaHIlzp_IXjs (the authors' link)"),
        Remote("NWPU-RESISC45.zip", [], optional=True, how="a zip of the same folder, from any mirror")],
        _resisc45, "none shipped: the reader splits each class 80/20 with numpy seed 0",
        manual="NWPU-RESISC45.rar (OneDrive only)"),
]}
