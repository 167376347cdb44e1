"""Tests of the image data path: CelebA on disk (official and CSV layouts), images + a metadata CSV, the coloured
digits, the torch Dataset, transforms and the DataLoader. Every image the tests read is written here."""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("torchvision")
# torchvision 0.29 deprecates its codecs (for TorchCodec); the tests write their images with them all the same.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

from torchvision.io import ImageReadMode, decode_image, encode_jpeg, encode_png, read_file, write_file  # noqa: E402

from fairopt.datasets import (  # noqa: E402
    ImageDataset,
    ImageGroupDataset,
    ImageSplit,
    image_loader,
    image_transform,
    load_celeba,
    load_colored_digits,
    load_image_csv,
)
from fairopt.datasets._splits import grouped_split  # noqa: E402
from fairopt.datasets.image_io import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

# The 40 CelebA attributes in the order of list_attr_celeba.txt.
ATTRIBUTES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]
# 12 faces: Blond_Hair, Male, Young per image (1 present, -1 absent), and the official partition 0/1/2.
BLOND = [1, -1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1]
MALE = [-1, -1, 1, 1, -1, 1, -1, 1, 1, -1, 1, -1]
YOUNG = [1, 1, -1, 1, -1, -1, 1, 1, -1, 1, 1, -1]
PARTITION = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (218, 178)) -> None:
    """A smooth random colour image (compresses like a photo)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (3, 4, 4), generator=g, dtype=torch.uint8)
    image = torch.nn.functional.interpolate(small[None].float(), size=size, mode="bilinear")[0]
    write_file(str(path), encode_jpeg(image.round().clamp(0, 255).to(torch.uint8), quality=90))


def _attribute_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.choice([-1, 1], size=(12, 40)), columns=ATTRIBUTES)
    table["Blond_Hair"], table["Male"], table["Young"] = BLOND, MALE, YOUNG
    table.insert(0, "image_id", [f"{i + 1:06d}.jpg" for i in range(12)])
    return table


def write_celeba(root: Path, variant: str = "txt", *, nested: bool = False) -> Path:
    """A 12-image CelebA folder in the official layout (``variant="txt"``) or Kaggle's CSV one."""
    table = _attribute_table()
    images = root / "img_align_celeba" / ("img_align_celeba" if nested else "")
    images.mkdir(parents=True)
    for i, name in enumerate(table["image_id"]):
        _jpeg(images / name, i)
    return write_list_files(root, variant)


def write_list_files(root: Path, variant: str = "txt") -> Path:
    """The attribute and partition files of :func:`write_celeba` (official text or Kaggle CSV variant)."""
    table = _attribute_table()
    if variant == "txt":
        rows = [f"{r.image_id} " + " ".join(f"{v:2d}" for v in r[1:]) for r in table.itertuples(index=False)]
        (root / "list_attr_celeba.txt").write_text(
            "\n".join([str(len(rows)), " ".join(ATTRIBUTES) + " ", *rows]) + "\n"
        )
        parts = [f"{n} {p}" for n, p in zip(table["image_id"], PARTITION)]
        (root / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    else:
        table.to_csv(root / "list_attr_celeba.csv", index=False)
        pd.DataFrame({"image_id": table["image_id"], "partition": PARTITION}).to_csv(
            root / "list_eval_partition.csv", index=False
        )
    return root


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_celeba(tmp_path_factory.mktemp("celeba"))


def _edit_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _copy(tmp_path: Path, source: Path, variant: str = "txt") -> Path:
    """A fresh CelebA folder to break: the JPEGs copied from ``source`` (encoding them is the slow part), the list
    files written anew."""
    root = tmp_path / "c"
    shutil.copytree(source / "img_align_celeba", root / "img_align_celeba")
    return write_list_files(root, variant)


# ------------------------------------------------------------------------------------------------ CelebA


def test_celeba_official_layout_gives_the_partition_labels_and_intersectional_groups(celeba_root):
    data = load_celeba(celeba_root, "Blond_Hair", ("Male", "Young"), image_size=64)
    assert isinstance(data, ImageDataset)
    assert (len(data.train), len(data.validation), len(data.test)) == (6, 3, 3)
    assert data.audit is None
    assert data.group_names == ("Male=0|Young=0", "Male=0|Young=1", "Male=1|Young=0", "Male=1|Young=1")
    for split, rows in (("train", range(6)), ("validation", range(6, 9)), ("test", range(9, 12))):
        part = data.split(split)
        assert part.index.tolist() == list(rows)
        assert part.y.tolist() == [float(BLOND[r] == 1) for r in rows]
        assert part.groups.tolist() == [2 * (MALE[r] == 1) + (YOUNG[r] == 1) for r in rows]
        assert [Path(p).name for p in part.paths] == [f"{r + 1:06d}.jpg" for r in rows]
    assert data.group_counts()["train"].tolist() == [1, 2, 2, 1]
    assert list(data.frame.columns) == ["image_id", *ATTRIBUTES, "partition"]
    assert data.frame["partition"].tolist() == PARTITION
    assert data.image_size == (64, 64) and data.hflip and data.mean == IMAGENET_MEAN


def test_celeba_csv_variant_reads_the_same_dataset(tmp_path, celeba_root):
    txt = load_celeba(celeba_root, "Smiling", "Male")
    csv = load_celeba(write_celeba(tmp_path / "kaggle", "csv"), "Smiling", "Male")
    assert csv.origin.source.endswith("list_attr_celeba.csv") and txt.origin.source.endswith(".txt")
    for a, b in zip(txt.splits(), csv.splits()):
        assert torch.equal(a.y, b.y) and torch.equal(a.groups, b.groups)
        assert [Path(p).name for p in a.paths] == [Path(p).name for p in b.paths]
    pd.testing.assert_frame_equal(txt.frame, csv.frame)
    assert txt.train.y.tolist() == [float(v == 1) for v in _attribute_table()["Smiling"][:6]]


def test_celeba_accepts_torchvisions_root_and_kaggles_nested_image_folder(tmp_path):
    write_celeba(tmp_path / "tv" / "celeba")
    data = load_celeba(tmp_path / "tv")  # torchvision's CelebA(root) reads root/celeba
    assert Path(data.train.paths[0]).parent == tmp_path / "tv" / "celeba" / "img_align_celeba"
    nested = write_celeba(tmp_path / "kg", "csv", nested=True)
    data = load_celeba(nested)
    assert Path(data.test.paths[0]) == nested / "img_align_celeba" / "img_align_celeba" / "000010.jpg"
    assert data.dataset("test")[0][0].shape == (3, 128, 128)


def test_celeba_batches_are_decoded_resized_and_normalized(celeba_root):
    data = load_celeba(celeba_root, image_size=None)
    x, y, g = next(iter(data.loader("train", batch_size=4, shuffle=False)))
    assert x.shape == (4, 3, 218, 178) and x.dtype == torch.float32
    assert y.dtype == torch.float32 and g.dtype == torch.int64 and y.tolist() == [1.0, 0.0, 1.0, 0.0]
    raw = decode_image(read_file(data.train.paths[1]), mode=ImageReadMode.RGB).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(x[1], (raw - mean) / std)
    cropped = load_celeba(celeba_root, image_size=(32, 24), center_crop=178).dataset("test")[2][0]
    assert cropped.shape == (3, 32, 24)


def test_celeba_audit_fraction_splits_the_official_validation_partition(celeba_root):
    data = load_celeba(celeba_root, audit_fraction=0.34, seed=3)
    assert data.audit is not None and (len(data.validation), len(data.audit)) == (2, 1)
    assert sorted([*data.validation.index, *data.audit.index]) == [6, 7, 8]
    assert data.split("audit").name == "audit" and data.group_counts()["audit"].sum() == 1
    assert load_celeba(celeba_root, audit_fraction=0.34, seed=3).audit.index.tolist() == data.audit.index.tolist()
    with pytest.raises(ValueError, match="no audit split"):
        load_celeba(celeba_root).split("audit")


def test_celeba_unknown_attribute_lists_the_known_ones(celeba_root):
    with pytest.raises(ValueError, match=r"unknown target attribute\(s\) \['Blonde'\].*Blond_Hair, Blurry"):
        load_celeba(celeba_root, target="Blonde")
    with pytest.raises(ValueError, match=r"unknown sensitive attribute\(s\) \['Gender'\].*40 known"):
        load_celeba(celeba_root, sensitive=("Male", "Gender"))
    with pytest.raises(ValueError, match=r"in .*; did you mean 'Blond_Hair' for 'Blond_hair'\? the 40 known"):
        load_celeba(celeba_root, target="Blond_hair")
    with pytest.raises(ValueError, match="cannot also be a sensitive"):
        load_celeba(celeba_root, target="Male", sensitive="Male")


def test_celeba_attribute_value_other_than_minus_one_or_one_names_file_line_and_column(tmp_path, celeba_root):
    root = _copy(tmp_path, celeba_root)
    table = _attribute_table()
    fields = ["000005.jpg", *[str(v) for v in table.iloc[4, 1:]]]
    fields[1 + ATTRIBUTES.index("Bangs")] = "0"
    _edit_line(root / "list_attr_celeba.txt", 7, " ".join(fields))  # row 5 is line 7 (count, names, rows)
    with pytest.raises(ValueError, match=r"list_attr_celeba.txt line 7, column 'Bangs' holds the value 0; .*-1"):
        load_celeba(root)


def test_celeba_csv_attribute_value_error_counts_the_header_line(tmp_path, celeba_root):
    root = _copy(tmp_path, celeba_root, "csv")
    table = _attribute_table()
    table.loc[2, "Male"] = 2
    table.to_csv(root / "list_attr_celeba.csv", index=False)
    with pytest.raises(ValueError, match=r"list_attr_celeba.csv line 4, column 'Male' holds the value 2"):
        load_celeba(root)


def test_celeba_malformed_attribute_file_is_named(tmp_path, celeba_root):
    root = _copy(tmp_path, celeba_root)
    _edit_line(root / "list_attr_celeba.txt", 1, "13")
    with pytest.raises(ValueError, match="line 1 announces 13 images but 12 rows follow"):
        load_celeba(root)
    _edit_line(root / "list_attr_celeba.txt", 1, "twelve")
    with pytest.raises(ValueError, match="line 1 must be the number of images, got 'twelve'"):
        load_celeba(root)
    _edit_line(root / "list_attr_celeba.txt", 1, "12")
    _edit_line(root / "list_attr_celeba.txt", 5, "000003.jpg " + " ".join(["1"] * 41))
    with pytest.raises(ValueError, match=r"list_attr_celeba.txt is malformed: .*Expected 41 fields in line 5, saw 42"):
        load_celeba(root)
    _edit_line(root / "list_attr_celeba.txt", 5, "000003.jpg " + " ".join(["1"] * 39))
    with pytest.raises(ValueError, match=r"line 5, column 'Young' holds a missing value \(too few fields\?\)"):
        load_celeba(root)


def test_celeba_partition_errors_name_the_line(tmp_path, celeba_root):
    root = _copy(tmp_path, celeba_root)
    _edit_line(root / "list_eval_partition.txt", 4, "000004.jpg 3")
    with pytest.raises(
        ValueError, match=r"list_eval_partition.txt line 4, column 'partition' holds 3; partitions are 0"
    ):
        load_celeba(root)
    _edit_line(root / "list_eval_partition.txt", 4, "000099.jpg 0")
    with pytest.raises(ValueError, match=r"image 000004.jpg \(.*list_attr_celeba.txt line 6.*\) has no partition"):
        load_celeba(root)
    _edit_line(root / "list_eval_partition.txt", 4, "000003.jpg 0")
    with pytest.raises(
        ValueError, match=r"list_eval_partition.txt line 4, column 'image_id': image 000003.jpg .*twice"
    ):
        load_celeba(root)


def test_celeba_empty_split_is_an_error(tmp_path, celeba_root):
    root = _copy(tmp_path, celeba_root)
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{i + 1:06d}.jpg {min(p, 1)}\n" for i, p in enumerate(PARTITION))
    )
    with pytest.raises(ValueError, match=r"split\(s\) 'test' would be empty \(train 6, validation 6, test 0 images\)"):
        load_celeba(root)
    with pytest.raises(ValueError, match=r"list_eval_partition.txt, column 'partition', lists no image with that code"):
        load_celeba(root)


def test_celeba_missing_files_are_named(tmp_path, celeba_root):
    root = _copy(tmp_path, celeba_root)
    (root / "img_align_celeba" / "000008.jpg").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"000008.jpg not found \(.*list_attr_celeba.txt line 10, column 'image_id'\); 1 of the 12",
    ):
        load_celeba(root)
    data = load_celeba(root, check_files=False)  # then the decoder names it when the batch is drawn
    with pytest.raises(FileNotFoundError, match=r"000008.jpg not found \(.*line 10, column 'image_id'\)"):
        data.dataset("validation")[1]
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"neither list_eval_partition\.txt nor list_eval_partition\.csv"):
        load_celeba(root)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_celeba(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"image folder .*img_align_celeba not found"):
        load_celeba(tmp_path)


def test_a_corrupt_image_is_named_when_decoded(tmp_path, celeba_root):
    root = _copy(tmp_path, celeba_root)
    (root / "img_align_celeba" / "000011.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    data = load_celeba(root)  # existence is checked at load time, decodability when the batch is drawn
    with pytest.raises(ValueError, match=r"cannot decode image file .*000011.jpg \(.*line 13, column 'image_id'\)"):
        next(iter(data.loader("test", batch_size=3)))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", r"is empty \(0 bytes\)"),
        ("half", "cannot decode image file .*: Image is incomplete or truncated; is it a valid image"),
        (b"GIF? no: plain text", "cannot decode image file .*: Unsupported image file"),
    ],
)
def test_unreadable_images_name_the_file_line_and_column(tmp_path, celeba_root, content, reason):
    root = _copy(tmp_path, celeba_root)
    path = root / "img_align_celeba" / "000002.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if content == "half" else content)
    data = load_celeba(root, image_size=16)
    with pytest.raises(ValueError, match=reason) as caught:
        list(data.loader("train", batch_size=3))
    assert "000002.jpg" in str(caught.value) and "list_attr_celeba.txt line 4, column 'image_id'" in str(caught.value)


def test_a_missing_image_is_named_from_a_worker_process(tmp_path, celeba_root):
    root = _copy(tmp_path, celeba_root)
    (root / "img_align_celeba" / "000012.jpg").unlink()
    data = load_celeba(root, image_size=16, check_files=False)
    loader = data.loader("test", batch_size=3, num_workers=1)
    assert loader.persistent_workers and loader.num_workers == 1
    with pytest.raises(FileNotFoundError, match=r"000012.jpg not found \(.*list_attr_celeba.txt line 14, column"):
        list(loader)


def test_list_files_that_are_not_text_are_named(tmp_path, celeba_root):
    root = _copy(tmp_path, celeba_root)
    (root / "list_eval_partition.txt").write_bytes(b"\x1f\x8b\x08\x00\xff\xfe compressed")  # a gzip header
    with pytest.raises(ValueError, match=r"list_eval_partition.txt is not a text file \(invalid start byte at byte"):
        load_celeba(root)
    (root / "list_attr_celeba.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"list_attr_celeba.txt is not a text file"):
        load_celeba(root)


def test_celeba_target_with_one_value_is_an_error(tmp_path, celeba_root):
    root = _copy(tmp_path, celeba_root)
    table = _attribute_table()
    table["Bald"] = -1
    table.to_csv(root / "list_attr_celeba.csv", index=False)
    (root / "list_attr_celeba.txt").unlink()
    with pytest.raises(ValueError, match="'Bald' is -1 for all 12 images"):
        load_celeba(root, target="Bald")


def test_two_constrained_steps_on_celeba_batches_under_cpu_autocast(celeba_root):
    """The whole image path once: files -> decoded, normalized batches -> a small ResNet under bf16 autocast (the
    CPU's default layout) -> ConstrainedOptimizer (equal opportunity between Male=0 and Male=1) for two steps."""
    import torch.nn.functional as F

    import fairopt
    from fairopt.vision import autocast, create_image_model, move_images, prepare_model

    data = load_celeba(celeba_root, "Blond_Hair", "Male", image_size=32)
    model = prepare_model(create_image_model("preact-resnet18-w2", seed=0))  # channels-first on the CPU
    opt = fairopt.ConstrainedOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-2),
        [fairopt.EqualOpportunity(0.0)],
        data.num_groups,
        dual_lr=0.5,
        dual_min_count=None,  # the dual reads each batch
    )
    before = [p.detach().clone() for p in model.parameters()]
    batches = list(data.loader("train", batch_size=3, seed=0))
    assert [tuple(x.shape) for x, _, _ in batches] == [(3, 3, 32, 32)] * 2  # 6 training images, 2 full batches
    for x, y, g in batches:
        with autocast("cpu", "bf16"):
            logits = model(move_images(x, "cpu"))
        assert logits.dtype == torch.float32 and logits.shape == (3,)
        opt.zero_grad()
        result = opt.step(loss=F.binary_cross_entropy_with_logits(logits, y), scores=logits, labels=y, groups=g)
        assert torch.isfinite(result.loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(not torch.equal(p, q) for p, q in zip(before, model.parameters()))  # every tensor moved
    assert torch.isfinite(opt.multipliers).all() and (opt.multipliers >= 0).all()


# ------------------------------------------------------------------------------------ images + a CSV


PATIENTS = [f"p{i:02d}" for i in range(12) for _ in range(1 + i % 3)]  # 12 patients, 1-3 images each: 24 rows


@pytest.fixture(scope="module")
def xray_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 grey PNG 'X-rays' of 12 patients and a CheXpert-like metadata CSV."""
    root = tmp_path_factory.mktemp("xrays")
    (root / "images").mkdir()
    n = len(PATIENTS)
    rng = np.random.default_rng(1)
    paths = []
    for i, patient in enumerate(PATIENTS):
        (root / "images" / patient).mkdir(exist_ok=True)
        paths.append(f"images/{patient}/view{i}.png")
        write_file(str(root / paths[-1]), encode_png(torch.full((1, 20, 16), 10 * i, dtype=torch.uint8)))
    patient_number = np.array([int(p[1:]) for p in PATIENTS])
    split = np.where(patient_number < 6, "train", np.where(patient_number < 9, "valid", "test"))
    frame = pd.DataFrame(
        {
            "Path": paths,
            "Patient": PATIENTS,
            "Sex": np.where(patient_number % 2 == 0, "Female", "Male"),
            "Age": 20 + 5 * patient_number,  # 20 .. 75
            "Finding": rng.permutation(["yes"] * 10 + ["no"] * (n - 10)),
            "Label": (np.arange(n) % 3 == 0).astype(int),
            "Split": split,
        }
    )
    frame.to_csv(root / "meta.csv", index=False)
    return root


def _load_xrays(root: Path, **kwargs):
    options = dict(path_column="Path", target="Label", sensitive=("Sex", "Age"), bins={"Age": [0, 40, 60, 100]})
    options.update(kwargs)
    csv = options.pop("csv", root / "meta.csv")
    return load_image_csv(csv, root, **options)


def test_a_numeric_sensitive_column_without_bins_warns(xray_folder):
    frame = pd.read_csv(xray_folder / "meta.csv")
    frame["Age"] = 20 + np.arange(len(frame))  # 24 distinct ages: one group each unless binned
    with pytest.warns(UserWarning, match=r"'Age' is numeric with 24 distinct values.*pass bins=\{'Age': \["):
        data = _load_xrays(xray_folder, csv=frame, sensitive="Age", bins=None)
    assert data.num_groups == 24


def test_image_csv_split_column_groups_and_age_bands(xray_folder):
    data = _load_xrays(xray_folder, split_column="Split", patient_column="Patient", image_size=16)
    frame = pd.read_csv(xray_folder / "meta.csv")
    assert data.group_names == tuple(
        f"Sex={s}|Age={a}" for s in ("Female", "Male") for a in ("[0, 40)", "[40, 60)", "[60, 100)")
    )
    band = np.searchsorted([40, 60], frame["Age"].to_numpy(), side="right")  # 0, 1, 2 by hand
    expected = (frame["Sex"] == "Male").to_numpy() * 3 + band
    for name, value in (("train", "train"), ("validation", "valid"), ("test", "test")):
        part = data.split(name)
        rows = np.flatnonzero(frame["Split"].to_numpy() == value)
        assert part.index.tolist() == rows.tolist()
        assert part.groups.tolist() == expected[rows].tolist()
        assert part.y.tolist() == frame["Label"].to_numpy()[rows].astype(float).tolist()
    assert data.frame.equals(frame) and data.name == "meta"


def test_image_csv_positive_label_and_dataframe_input(xray_folder):
    frame = pd.read_csv(xray_folder / "meta.csv")
    data = _load_xrays(xray_folder, csv=frame, target="Finding", positive_label="yes", sensitive="Sex", bins=None)
    y = torch.cat([p.y for p in data.splits()])
    rows = np.concatenate([p.index for p in data.splits()])
    assert y.tolist() == (frame["Finding"].to_numpy()[rows] == "yes").astype(float).tolist()
    assert data.name == "dataframe" and data.origin.source == "<DataFrame>"
    with pytest.raises(ValueError, match="positive_label 'maybe' does not occur in target column 'Finding'") as error:
        _load_xrays(xray_folder, target="Finding", positive_label="maybe")
    assert "did you mean" not in str(error.value)  # nothing spelled alike: the values found are the hint
    with pytest.raises(ValueError, match=r"'Yes' does not occur in .*; did you mean 'yes' for 'Yes'\? values found"):
        _load_xrays(xray_folder, target="Finding", positive_label="Yes")


def test_image_csv_seeded_patient_split_never_divides_a_patient(xray_folder):
    data = _load_xrays(xray_folder, patient_column="Patient", validation_fraction=0.25, test_fraction=0.25, seed=5)
    patients = [set(data.frame["Patient"].to_numpy()[p.index]) for p in data.splits()]
    assert patients[0].isdisjoint(patients[1]) and patients[0].isdisjoint(patients[2])
    assert patients[1].isdisjoint(patients[2]) and set.union(*patients) == set(PATIENTS)
    sizes = [len(p) for p in data.splits()]
    assert sum(sizes) == 24 and abs(sizes[0] - 12) <= 3 and all(abs(s - 6) <= 3 for s in sizes[1:])
    again = _load_xrays(xray_folder, patient_column="Patient", validation_fraction=0.25, test_fraction=0.25, seed=5)
    assert [p.index.tolist() for p in again.splits()] == [p.index.tolist() for p in data.splits()]
    audited = data.with_audit(0.5, seed=1)
    parts = [set(data.frame["Patient"].to_numpy()[p.index]) for p in (audited.validation, audited.audit)]
    assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == patients[1]


def test_grouped_split_deals_whole_units_to_the_fractions():
    units = np.repeat(np.arange(50), 4)  # 50 units of 4 rows
    parts = grouped_split(units, np.zeros(200, dtype=np.int64), [0.5, 0.3, 0.2], seed=0)
    assert [len(p) for p in parts] == [100, 60, 40]
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))
    assert all(set(units[parts[a]]).isdisjoint(units[parts[b]]) for a, b in ((0, 1), (0, 2), (1, 2)))
    singles = grouped_split(np.arange(10), np.arange(10) % 2, [0.6, 0.4], seed=0)
    assert [len(p) for p in singles] == [6, 4]


def test_image_csv_rows_split_by_fraction_without_patients(xray_folder):
    data = _load_xrays(xray_folder, sensitive="Sex", bins=None, validation_fraction=0.25, test_fraction=0.25)
    assert [len(p) for p in data.splits()] == [12, 6, 6]
    assert data.patients is None and data.audit is None
    audited = _load_xrays(xray_folder, sensitive="Sex", bins=None, audit_fraction=0.5)
    assert len(audited.audit) + len(audited.validation) == len(
        _load_xrays(xray_folder, sensitive="Sex", bins=None).validation
    )


def test_image_csv_grayscale_batches(xray_folder):
    data = _load_xrays(xray_folder, split_column="Split", channels=1, image_size=(12, 10))
    loader = data.loader("train", batch_size=5, seed=0)
    x, y, g = next(iter(loader))
    assert x.shape == (5, 1, 12, 10) and y.shape == (5,) and g.shape == (5,)
    assert (x.dtype, y.dtype, g.dtype) == (torch.float32, torch.float32, torch.int64)
    X, _, _ = data.tensors("test")
    assert X.shape == (len(data.test), 1, 12, 10)
    first = data.test.index[0]  # PNG is lossless: the pixel value is 10 * row
    torch.testing.assert_close(X[0], torch.full((1, 12, 10), (10 * first / 255 - 0.449) / 0.226))


def test_images_of_different_sizes_without_image_size_say_what_to_pass(tmp_path, xray_folder):
    """Used as decoded (image_size=None), a 20x16 and a 24x16 image cannot share a batch: torch's own error ("stack
    expects each tensor to be equal size") named neither the cause nor the option."""
    import shutil

    root = tmp_path / "xrays"
    shutil.copytree(xray_folder, root)
    write_file(str(root / "images/p00/view0.png"), encode_png(torch.zeros((1, 24, 16), dtype=torch.uint8)))
    data = _load_xrays(root, split_column="Split", channels=1, image_size=None)
    message = (
        r"images of different sizes in one (batch|split), \(C, H, W\) = \(1, 20, 16\), \(1, 24, 16\): .*image_size=N"
    )
    with pytest.raises(ValueError, match=message):
        next(iter(data.loader("train", batch_size=len(data.train), shuffle=False)))
    with pytest.raises(ValueError, match=message):
        data.tensors("train")
    x, _, _ = next(iter(_load_xrays(root, split_column="Split", channels=1, image_size=16).loader("train", 4)))
    assert x.shape == (4, 1, 16, 16)  # resized, they batch
    # a transform that returns several views is collated as the default collate does (no size check on a list)
    from fairopt.datasets.image_io import ImageGroupDataset, image_loader

    views = ImageGroupDataset(data.split("train"), lambda image: [image.float(), image.float().flip(-1)], channels=1)
    (first, flipped), _, _ = next(iter(image_loader(views, 1)))
    assert first.shape == flipped.shape == (1, 1, 24, 16) or first.shape == flipped.shape == (1, 1, 20, 16)


def test_image_csv_patient_in_two_splits_is_an_error(xray_folder):
    frame = pd.read_csv(xray_folder / "meta.csv")
    frame.loc[frame.index[frame["Patient"] == "p02"][1], "Split"] = "test"
    with pytest.raises(
        ValueError, match=r"patient 'p02' \(Patient\) has images in split 'train' .*row 3.* and 'test' .*row 4"
    ):
        _load_xrays(xray_folder, csv=frame, split_column="Split", patient_column="Patient")


def test_image_csv_bad_inputs_name_the_line_and_column(tmp_path, xray_folder):
    frame = pd.read_csv(xray_folder / "meta.csv")

    def load_with(change, **kwargs):
        changed = frame.copy()
        change(changed)
        changed.to_csv(tmp_path / "bad.csv", index=False)
        return _load_xrays(xray_folder, csv=tmp_path / "bad.csv", split_column="Split", **kwargs)

    with pytest.raises(ValueError, match=r"bad.csv line 7, column 'Label' holds 2: the target is not binary"):
        load_with(lambda f: f.__setitem__("Label", f["Label"].where(f.index != 5, 2)))
    with pytest.raises(ValueError, match=r"bad.csv line 3, column 'Label' is missing"):
        load_with(lambda f: f.__setitem__("Label", f["Label"].where(f.index != 1)))
    with pytest.raises(ValueError, match=r"line 4, column 'Age' holds 130, outside the bins \[0, 100\)"):
        load_with(lambda f: f.__setitem__("Age", f["Age"].where(f.index != 2, 130)))
    with pytest.raises(ValueError, match=r"line 5, column 'Age' holds 'old', not a number"):
        load_with(lambda f: f.__setitem__("Age", f["Age"].astype(object).where(f.index != 3, "old")))
    with pytest.raises(ValueError, match=r"line 2, column 'Sex' is missing \(1 rows\)"):
        load_with(lambda f: f.__setitem__("Sex", f["Sex"].where(f.index != 0)))
    with pytest.raises(ValueError, match=r"line 6, column 'Split' holds 'holdout'; split values are"):
        load_with(lambda f: f.__setitem__("Split", f["Split"].where(f.index != 4, "holdout")))
    with pytest.raises(ValueError, match=r"split\(s\) 'test' would be empty .*split column 'Split'"):
        load_with(lambda f: f.__setitem__("Split", f["Split"].replace("test", "valid")))
    with pytest.raises(FileNotFoundError, match=r"nope.png not found \(.*bad.csv line 10, column 'Path'\)"):
        load_with(lambda f: f.__setitem__("Path", f["Path"].where(f.index != 8, "images/nope.png")))
    with pytest.raises(ValueError, match=r"sensitive column 'Race' not found in .*available columns: \['Path'"):
        load_with(lambda f: None, sensitive=("Sex", "Race"), bins=None)
    with pytest.raises(ValueError, match=r"path_column column 'File' not found"):
        load_with(lambda f: None, path_column="File")
    with pytest.raises(ValueError, match=r"bins name column\(s\) \['Weight'\] that are not sensitive"):
        load_with(lambda f: None, bins={"Age": [0, 100], "Weight": [0, 1]})
    with pytest.raises(ValueError, match=r"line 2, column 'Sex' holds 'Female', not among sensitive_categories"):
        load_with(lambda f: None, sensitive_categories={"Sex": ["Male", "Other"]})
    with pytest.raises(ValueError, match="one label only"):
        load_with(lambda f: f.__setitem__("Label", 0))
    with pytest.raises(
        ValueError,
        match=r"split\(s\) 'test' would be empty \(train 1, validation 1, test 0 images\): 2 rows .* train 0.6, valid",
    ):
        _load_xrays(xray_folder, csv=frame.iloc[:2])


def test_image_csv_that_is_not_text_is_named(tmp_path, xray_folder):
    bad = tmp_path / "latin.csv"
    bad.write_bytes("Path,Label,Sex\nimages/p00/view0.png,1,Fran\xe7oise\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv is not UTF-8 text .*read_csv_kwargs=\{'encoding': 'latin-1'\}"):
        load_image_csv(bad, xray_folder, "Path", "Label", "Sex")


def test_image_csv_split_values_map_a_coded_column(xray_folder):
    frame = pd.read_csv(xray_folder / "meta.csv")
    frame["Fold"] = frame["Split"].map({"train": 0, "valid": 1, "test": 2})
    data = _load_xrays(
        xray_folder, csv=frame, split_column="Fold", split_values={0: "train", 1: "validation", 2: "test"}
    )
    by_name = _load_xrays(xray_folder, csv=frame, split_column="Split")
    assert [p.index.tolist() for p in data.splits()] == [p.index.tolist() for p in by_name.splits()]


# --------------------------------------------------------------------------------- the coloured digits


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    pytest.importorskip("sklearn")
    return load_colored_digits()


def _rates(pred: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> tuple[float, float]:
    """|TPR(red) - TPR(green)| and |FPR(red) - FPR(green)|."""
    tpr = [pred[(g == k) & (y == 1)].float().mean().item() for k in (0, 1)]
    fpr = [pred[(g == k) & (y == 0)].float().mean().item() for k in (0, 1)]
    return abs(tpr[1] - tpr[0]), abs(fpr[1] - fpr[0])


def test_colored_digits_sizes_groups_and_injected_correlation(digits):
    from sklearn.datasets import load_digits

    assert [len(p) for p in digits.splits()] == [449, 449, 899]
    assert digits.group_names == ("color=green", "color=red") and digits.sensitive == ("color",)
    frame = digits.frame
    assert (frame["digit"].to_numpy() == load_digits().target).all()
    assert ((frame["digit"] >= 5).astype(int) == frame["clean_label"]).all()
    assert (frame["label"] == frame["clean_label"] ^ frame["flipped"].astype(int)).all()
    assert abs(frame["flipped"].mean() - 0.1) < 0.03  # Binomial(1797, 0.1): sd 0.007
    red = frame["color"] == "red"
    assert abs(red[frame["label"] == 1].mean() - 0.8) < 0.05 and abs(red[frame["label"] == 0].mean() - 0.2) < 0.05
    images = digits.train.images
    assert images.shape == (449, 3, 8, 8) and images.dtype == torch.uint8
    is_red = digits.train.groups == 1
    assert images[is_red][:, 1].sum() == 0 and images[~is_red][:, 0].sum() == 0 and images[:, 2].sum() == 0
    assert int(images.max()) == 255  # 16 grey levels scaled to 0..255
    for part in digits.splits():  # stratified by (colour, label): each split keeps the correlation
        assert abs(part.groups[part.y == 1].float().mean().item() - 0.8) < 0.06


def test_colored_digits_normalization_is_fitted_on_the_training_split(digits):
    X, y, g = digits.tensors("train")
    assert X.shape == (449, 3, 8, 8) and X.dtype == torch.float32
    torch.testing.assert_close(X[:, :2].mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(X[:, :2].std(dim=(0, 2, 3), unbiased=False), torch.ones(2), atol=1e-5, rtol=0)
    assert digits.std[2] == 1.0 and (X[:, 2] == 0).all()  # the empty blue channel is left as it is
    x, yb, gb = next(iter(digits.loader("train", batch_size=449, shuffle=False)))
    torch.testing.assert_close(x, X)
    assert torch.equal(yb, y) and torch.equal(gb, g)
    assert load_colored_digits(image_size=16).dataset("test")[0][0].shape == (3, 16, 16)


def test_colored_digits_are_determined_by_the_seed(digits):
    again = load_colored_digits(seed=0)
    for a, b in zip(digits.splits(), again.splits()):
        assert torch.equal(a.images, b.images) and torch.equal(a.y, b.y) and np.array_equal(a.index, b.index)
    other = load_colored_digits(seed=1)
    assert not torch.equal(other.train.y, digits.train.y)
    assert not np.array_equal(other.frame["color"].to_numpy(), digits.frame["color"].to_numpy())


def _fit_logistic(digits: ImageDataset) -> tuple[float, float, float]:
    """Test accuracy and equalized-odds gaps of an unconstrained logistic regression on the pixels."""
    X, y, _ = digits.tensors("train")
    Xt, yt, gt = digits.tensors("test")
    torch.manual_seed(0)
    model = torch.nn.Linear(X[0].numel(), 1)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(X.flatten(1))[:, 0], y)
        loss = loss + 1e-3 * model.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = model(Xt.flatten(1))[:, 0] > 0
    return (pred == yt.bool()).float().mean().item(), *_rates(pred, yt, gt)


def test_colored_digits_make_an_unconstrained_model_unfair(digits):
    accuracy, tpr_gap, fpr_gap = _fit_logistic(digits)
    assert accuracy > 0.75
    assert tpr_gap > 0.25 and fpr_gap > 0.25  # the colour shortcut
    # Control: colour independent of the label gives no such gap (test groups of ~450: a gap's sd is ~0.05).
    _, tpr_gap_0, fpr_gap_0 = _fit_logistic(load_colored_digits(correlation=0.5))
    assert tpr_gap_0 < 0.12 and fpr_gap_0 < 0.12


def test_colored_digits_bad_arguments():
    pytest.importorskip("sklearn")
    with pytest.raises(ValueError, match="unknown target 'odd'; valid choices: digit>=5, even"):
        load_colored_digits(target="odd")
    with pytest.raises(ValueError, match=r"correlation must be in \[0.5, 1\]"):
        load_colored_digits(correlation=0.3)
    with pytest.raises(ValueError, match=r"label_noise must be in \[0, 0.5\)"):
        load_colored_digits(label_noise=0.5)
    even = load_colored_digits(target="even", label_noise=0.0)
    assert (even.frame["label"] == (even.frame["digit"] % 2 == 0)).all()


def test_colored_digits_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'fairopt\[peers\]'"):
        load_colored_digits()


# ------------------------------------------------------------------------- dataset, transform, loader


def test_image_loader_sets_workers_pinning_and_persistence(digits):
    data = digits.dataset("train")
    plain = image_loader(data, 32)
    assert plain.num_workers == 0 and not plain.persistent_workers
    assert plain.pin_memory == torch.cuda.is_available()
    workers = image_loader(data, 32, shuffle=True, seed=0, num_workers=1, prefetch_factor=3)
    assert workers.persistent_workers and workers.prefetch_factor == 3
    batches = [b[2] for b in workers]  # one worker process: the dataset pickles
    assert sum(len(b) for b in batches) == 449
    same = image_loader(data, 32, shuffle=True, seed=0)
    assert torch.equal(torch.cat(batches), torch.cat([b[2] for b in same]))  # the seed fixes the order
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        image_loader(data, 0)
    with pytest.raises(ValueError, match="persistent_workers and prefetch_factor need num_workers > 0"):
        image_loader(data, 8, persistent_workers=True)


def test_augmentation_flips_only_where_a_mirror_keeps_the_label(celeba_root, digits):
    names = [type(t).__name__ for t in load_celeba(celeba_root).transform(augment=True).transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToDtype", "Normalize"]
    names = [type(t).__name__ for t in digits.transform(augment=True).transforms]
    assert names == ["ToDtype", "Normalize"]  # native 8x8, no mirror: nothing random to add
    torch.manual_seed(0)
    x = load_celeba(celeba_root, image_size=32).dataset("train", augment=True)[0][0]
    assert x.shape == (3, 32, 32)
    with pytest.raises(ValueError, match="std must be positive"):
        image_transform(8, mean=(0.5,), std=(0.0,))


def test_image_split_checks_its_fields():
    y, g, index = torch.zeros(2), torch.zeros(2, dtype=torch.int64), np.arange(2)
    with pytest.raises(ValueError, match="exactly one of paths"):
        ImageSplit("train", y, g, index)
    with pytest.raises(ValueError, match="uint8"):
        ImageSplit("train", y, g, index, images=torch.zeros(2, 3, 4, 4))
    split = ImageSplit("train", y, g, index, paths=("a.png", "b.png"))
    assert split.subset(np.array([1]), "audit").paths == ("b.png",)
    dataset = ImageGroupDataset(split, lambda image: image)
    with pytest.raises(FileNotFoundError, match=r"image file a\.png not found"):
        dataset[0]


def test_subsample_train_keeps_the_other_splits(digits):
    small = digits.subsample_train(100, seed=2)
    assert len(small.train) == 100 and set(small.train.index) <= set(digits.train.index)
    assert small.test is digits.test and small.mean == digits.mean
    with pytest.raises(ValueError, match=r"size must be in \[1, 449\]"):
        digits.subsample_train(500)
    audited = digits.subsample_train(100, seed=2, audit_size=40)  # the same code as TabularDataset's
    assert np.array_equal(audited.train.index, small.train.index) and len(audited.audit) == 40
    assert set(audited.audit.index).isdisjoint(audited.train.index) and audited.audit.images.shape[0] == 40
    with pytest.raises(ValueError, match=r"an audit split already \(40 images\); carve it once"):
        audited.with_audit(0.5)
    three = replace(digits, validation=digits.validation.subset(np.arange(3)))
    with pytest.raises(ValueError, match=r"carving 0\.1 of the 3 validation images leaves the audit split empty"):
        three.with_audit(0.1)


def test_patients_never_straddle_an_audit_carved_from_training_images(xray_folder):
    data = _load_xrays(xray_folder, split_column="Split", patient_column="Patient")
    with pytest.raises(ValueError, match="audit_size would split patients"):
        data.subsample_train(5, audit_size=3)
    assert len(data.subsample_train(5).train) == 5  # without an audit split, a subset of training images is fine


# ------------------------------------------------------------------------ batches for training: BatchNorm, balance


def test_training_batches_are_full_so_batchnorm_never_sees_a_single_image(digits):
    from fairopt.vision import create_image_model

    train = digits.loader("train", 64, seed=0)  # 449 = 7 * 64 + 1
    assert train.drop_last and [len(y) for _, y, _ in train] == [64] * 7
    test = digits.loader("test", 64)  # evaluation keeps every image: 899 = 14 * 64 + 3
    assert not test.drop_last and [len(y) for _, y, _ in test][-2:] == [64, 3]
    model = create_image_model("preact-resnet18-w2", seed=0)  # 8x8 digits: the last stage is 1x1
    x, _, _ = next(iter(train))
    assert model(x).shape == (64,)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        model(x[:1])  # what the 449th image alone would do
    with pytest.warns(UserWarning, match="the last training batch holds 1 of the 449 images"):
        digits.loader("train", 64, drop_last=False)
    with pytest.raises(ValueError, match=r"train split has 449 images, fewer than batch_size=500.*batch_size <= 449"):
        digits.loader("train", 500)
    assert len(digits.loader("train", 500, drop_last=False)) == 1


def test_group_balanced_training_batches(digits):
    groups, labels = digits.train.groups.numpy(), digits.train.y.numpy()
    red = [np.flatnonzero((groups == 1) & (labels == y))[:3] for y in (0, 1)]
    rows = np.concatenate([np.flatnonzero(groups == 0)[:50], *red])  # red made rare on purpose: 6 of 56 images
    skewed = replace(digits, train=digits.train.subset(rows))
    assert skewed.group_counts()["train"].tolist() == [50, 6]
    loader = skewed.loader("train", 10, balance="group", seed=3)
    counts = [torch.bincount(g, minlength=2).tolist() for _, _, g in loader]
    assert len(counts) == 6 and all(c == [5, 5] for c in counts)  # ceil(56 / 10) batches of 5 + 5
    by_label = skewed.loader("train", 8, balance="group_label", seed=3)
    for _, y, g in by_label:
        assert torch.bincount(2 * g + y.long(), minlength=4).tolist() == [2, 2, 2, 2]
    assert by_label.batch_sampler.state_dict() == {"seed": 3, "epoch": 0}
    with pytest.raises(ValueError, match="balance must be None, 'group' or 'group_label'"):
        skewed.loader("train", 8, balance="groups")
    with pytest.raises(ValueError, match="do not apply with balance="):
        skewed.loader("train", 8, balance="group", shuffle=True)


def test_missing_torchvision_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match="pip install torchvision"):
        image_transform(8)
