"""``fairopt bench`` on images: a tiny CelebA folder (official layout) and an images + CSV folder written here, driven
through the CLI; every bad value exits 2 with one line; the presets print the published numbers; the FLOP count of
the run-time estimate by hand; held-out dual batches never move batch-norm statistics."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("timm")
pytestmark = pytest.mark.filterwarnings(
    "ignore:The image decoding and encoding capabilities:DeprecationWarning",
    "ignore:fairopt.bench.config.METHODS is deprecated:DeprecationWarning",
)

from torchvision.io import encode_jpeg, encode_png, write_file  # noqa: E402

from fairopt.bench.images import (  # noqa: E402
    IMAGE_PRESETS,
    ImageStudyConfig,
    estimate_seconds,
    forward_flops,
    image_forward,
)
from fairopt.bench.runner import heldout_batch  # noqa: E402
from fairopt.cli import main  # noqa: E402
from fairopt.vision import create_image_model  # noqa: E402

# 12 faces: five attributes (the loader reads whatever names line 2 lists) and the official partition 0/1/2.
ATTRIBUTES = {
    "Blond_Hair": [1, -1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1],
    "Male": [-1, -1, 1, 1, -1, 1, -1, 1, 1, -1, 1, -1],
    "Smiling": [1, 1, -1, 1, -1, -1, 1, 1, -1, 1, 1, -1],
    "Wearing_Earrings": [1, -1, -1, -1, 1, -1, 1, -1, -1, 1, -1, 1],
    "Young": [-1, 1, 1, -1, 1, 1, -1, 1, 1, -1, 1, -1],
}
PARTITION = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
TINY = ["--models", "preact-resnet18-w1", "--image-size", "8", "--epochs", "1", "--batch-size", "3", "--quiet"]


def _image(seed: int, size: tuple[int, int] = (22, 18)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def celeba(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-image CelebA folder in the official layout: img_align_celeba/*.jpg and the two text files."""
    root = tmp_path_factory.mktemp("celeba")
    (root / "img_align_celeba").mkdir()
    names = [f"{i + 1:06d}.jpg" for i in range(12)]
    for i, name in enumerate(names):
        write_file(str(root / "img_align_celeba" / name), encode_jpeg(_image(i), quality=90))
    rows = [f"{n} " + " ".join(f"{v[i]:2d}" for v in ATTRIBUTES.values()) for i, n in enumerate(names)]
    (root / "list_attr_celeba.txt").write_text("\n".join([str(len(rows)), " ".join(ATTRIBUTES), *rows]) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(f"{n} {p}" for n, p in zip(names, PARTITION)) + "\n")
    return root


@pytest.fixture(scope="module")
def image_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 PNGs under images/ and metadata.csv (path, diagnosis benign/malignant, sex), seeded splits."""
    root = tmp_path_factory.mktemp("isic")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    paths = [f"img{i:02d}.png" for i in range(20)]
    for i, path in enumerate(paths):
        write_file(str(root / "images" / path), encode_png(_image(100 + i, (10, 10))))
    frame = pd.DataFrame(
        {
            "path": paths,
            "diagnosis": np.where(np.arange(20) % 2 == 0, "malignant", "benign"),
            "sex": rng.permutation(["female", "male"] * 10),
        }
    )
    frame.to_csv(root / "metadata.csv", index=False)
    return root


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _gap(report: dict, rate: str) -> float:
    """max - min over groups of the TPR or FPR, from a report's (G, 9) table in study.json, by hand (NaN when a group
    has no positive, resp. negative, example: the rate is undefined there)."""
    table = report["statistics"]
    rows = [dict(zip(table["columns"], values)) for values in table["table"]]
    hit, miss = ("tp", "fn") if rate == "tpr" else ("fp", "tn")
    values = [r[hit] / (r[hit] + r[miss]) for r in rows if r[hit] + r[miss] > 0]
    return max(values) - min(values) if len(values) == len(rows) else float("nan")


# -------------------------------------------------------------------------------------------------- end to end


def test_celeba_folder_runs_through_the_cli_with_the_official_partition(celeba, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["bench", "--dataset", f"celeba:{celeba}", "--target", "Blond_Hair", "--sensitive", "Male", *TINY]
    argv += ["--methods", "unconstrained,lagrangian-heldout", "--out", str(out), "--no-plots"]
    code, printed, err = _run(argv, capsys)
    assert code == 0, err
    study = json.loads((out / "study.json").read_text())
    # the official partition: 6 train, 3 validation (carved into validation 2 + audit 1), 3 test
    assert study["split_sizes"] == {"train": 6, "validation": 2, "held-out": 1, "test": 3}
    assert study["group_names"] == ["Male=0", "Male=1"]
    assert [r["method"] for r in study["runs"]] == ["unconstrained", "lagrangian-heldout"]
    assert study["runs"][1]["selection"].startswith("best iterate on validation")
    for run, row in zip(study["runs"], study["summary"]):  # the table's test value: the report's counts, by hand
        test = run["reports"]["test"]
        assert sum(g["count"] for g in test["groups"]) == 3
        defined = [g for g in (_gap(test, "tpr"), _gap(test, "fpr")) if not np.isnan(g)]  # 3 images: maybe none
        assert row["test_value"] == (pytest.approx(max(defined)) if defined else None)
    assert "Expression value by width k" in printed and "| 1 | unconstrained |" in printed
    assert "preact-resnet18-w1" in (out / "study.md").read_text()


def test_group_thresholds_on_an_image_folder(celeba, tmp_path, capsys):
    # the validation scores are streamed from the folder (no split held in memory), so post-processing runs on disk
    out = tmp_path / "run"
    argv = ["bench", "--dataset", f"celeba:{celeba}", *TINY, "--methods", "thresholds", "--out", str(out)]
    code, _, err = _run([*argv, "--no-plots"], capsys)
    assert code == 0, err
    (run,) = json.loads((out / "study.json").read_text())["runs"]
    assert run["method"] == "thresholds" and run["selection"].startswith("group thresholds on validation")
    assert run["multipliers"] == [] and sum(g["count"] for g in run["reports"]["test"]["groups"]) == 3
    # the record names what was read: the attribute and partition files' hashes, and the defaults the loader chose
    data = json.loads((out / "study.json").read_text())["provenance"]["data"]
    assert data["source"] == "celeba" and data["path"] == str(celeba.resolve())
    assert data["sha256"] == {
        name: hashlib.sha256((celeba / name).read_bytes()).hexdigest()
        for name in ("list_attr_celeba.txt", "list_eval_partition.txt")
    }
    assert (data["target"], data["sensitive"], data["rows"]) == ("Blond_Hair", ["Male"], 12)


def test_images_csv_folder_with_a_positive_label(image_csv, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["bench", "--dataset", f"images:{image_csv / 'metadata.csv'}", "--image-root", str(image_csv / "images")]
    argv += ["--target", "diagnosis", "--positive-label", "malignant", "--sensitive", "sex", *TINY]
    argv += ["--methods", "unconstrained", "--constraint", "equal_opportunity", "--out", str(out), "--no-plots"]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    study = json.loads((out / "study.json").read_text())
    sizes = study["split_sizes"]
    assert sum(sizes.values()) == 20 and sizes["test"] == 4 and sizes["validation"] + sizes["held-out"] == 4
    assert study["group_names"] == ["sex=female", "sex=male"]
    # the index file is hashed (the image files it names are not)
    data = study["provenance"]["data"]
    assert data["source"] == "images" and data["path"] == str((image_csv / "metadata.csv").resolve())
    assert data["sha256"] == hashlib.sha256((image_csv / "metadata.csv").read_bytes()).hexdigest()
    summary = study["summary"][0]
    assert summary["test_value"] == pytest.approx(_gap(study["runs"][0]["reports"]["test"], "tpr"))


def test_the_width_plot_needs_two_widths(image_csv, tmp_path, capsys):
    """One width drew seven panels of one point each: no plot against width then."""
    pytest.importorskip("matplotlib")
    argv = ["bench", "--dataset", f"images:{image_csv / 'metadata.csv'}", "--image-root", str(image_csv / "images")]
    argv += ["--target", "diagnosis", "--positive-label", "malignant", "--sensitive", "sex", *TINY]
    argv += ["--methods", "unconstrained"]
    for models, drawn in (("preact-resnet18-w1", False), ("preact-resnet18-w1,preact-resnet18-w2", True)):
        out = tmp_path / models.replace(",", "_")
        code, _, err = _run([*argv, "--models", models, "--out", str(out)], capsys)
        assert code == 0, err
        assert (out / "accuracy_vs_constraint.png").is_file()
        assert (out / "constraint_vs_width.png").is_file() is drawn


def test_a_folders_batch_is_sized_to_its_training_split(image_csv, tmp_path, capsys):
    """A fixed batch of 128 on 360 training images trained 2 steps an epoch and dropped 104 images (drop_last): a
    folder's default batch is the largest power of two up to an eighth of the split, within [2, 128]."""
    from fairopt.bench.images import ImageStudyConfig

    auto = ImageStudyConfig(batch_size=None)
    assert [auto.batch_size_for(n) for n in (10, 12, 16, 360, 449, 1023, 1024, 100_000)] == [2, 2, 2, 32, 32, 64,
                                                                                              128, 128]  # fmt: skip
    assert ImageStudyConfig().batch_size_for(360) == 64  # the digits study's own batch
    out = tmp_path / "run"
    argv = ["bench", "--dataset", f"images:{image_csv / 'metadata.csv'}", "--image-root", str(image_csv / "images")]
    argv += ["--target", "diagnosis", "--positive-label", "malignant", "--sensitive", "sex", "--models",
             "preact-resnet18-w1", "--epochs", "1", "--image-size", "8", "--methods", "unconstrained", "--out",
             str(out), "--no-plots"]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    assert json.loads((out / "study.json").read_text())["config"]["batch_size"] is None


def test_a_sensitive_column_with_one_value_is_refused_before_any_run_trains(image_csv, tmp_path, capsys):
    """It failed at the second method (lagrangian builds its constraint set), after the first had trained."""
    frame = pd.read_csv(image_csv / "metadata.csv").assign(site="clinic")
    frame.to_csv(tmp_path / "one_site.csv", index=False)
    argv = ["bench", "--dataset", f"images:{tmp_path / 'one_site.csv'}", "--image-root", str(image_csv / "images")]
    argv += ["--target", "diagnosis", "--positive-label", "malignant", "--sensitive", "site", *TINY]
    argv += ["--methods", "unconstrained,lagrangian", "--out", str(tmp_path / "run"), "--no-plots"]
    code, out, err = _run(argv, capsys)
    assert code == 2 and "every row of this data is in one group (site=clinic)" in err
    assert "choose a --sensitive column with at least two values" in err and "seed 0:" not in out + err  # no run
    assert not (tmp_path / "run").exists()  # and no empty output folder


# ------------------------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target", "Blonde"], "unknown target attribute(s) ['Blonde']"),
        (["--sensitive", "Gender"], "unknown sensitive attribute(s) ['Gender']"),
        (["--models", "resnet-18x"], "unknown image model 'resnet-18x'"),
        (["--models", "preact-resnet18-w0"], "preact-resnet18-w0"),
        (["--image-size", "0"], "expected N or HxW in pixels"),
        (["--image-size", "12x"], "expected N or HxW in pixels"),
        (["--amp", "fp16"], "amp='fp16' is for CUDA"),
        (["--workers", "-1"], "expected a whole number >= 0"),
        (["--batch-size", "1"], "invalid batch_size: 1; it must be >= 2 (batch norm needs two images"),
        (["--image-root", "."], "--image-root and --positive-label are for images:CSV datasets"),
        (["--epochs-large", "3"], "--epochs-large: for tabular studies only"),
    ],
)
def test_bad_values_exit_2_with_one_line(celeba, extra, message, capsys):
    code, _, err = _run(["bench", "--dataset", f"celeba:{celeba}", *extra], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("fairopt bench: error: ")  # argparse's usage, then one line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "celeba:/nonexistent/celeba"], "celeba:/nonexistent/celeba: no such folder"),
        (["--dataset", "images:/nonexistent.csv", "--target", "y", "--sensitive", "s"], "no such file"),
        (["--dataset", "digits", "--target", "Blond_Hair"], "the digits' targets are digit>=5, even"),
        (["--dataset", "digits", "--sensitive", "Male"], "the digits' only group is color"),
        (["--dataset", "mnist:x"], "unknown dataset 'mnist:x'"),
        (["--dataset", "german", "--image-size", "8"], "--image-size: for image studies only"),
        (["--preset", "mindiff-celeba"], "needs your local copy of its data: --dataset celeba:DIR"),
        (["--preset", "cotter2019-adult", "--dataset", "digits"], "--preset cotter2019-adult is a tabular study"),
    ],
)
def test_bad_datasets_exit_2_with_one_line(argv, message, capsys):
    code, _, err = _run(["bench", *argv], capsys)
    assert code == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err


def test_images_csv_needs_its_root_and_existing_columns(image_csv, capsys):
    csv = f"images:{image_csv / 'metadata.csv'}"
    code, _, err = _run(["bench", "--dataset", csv, "--target", "diagnosis", "--sensitive", "sex"], capsys)
    assert code == 2 and "--image-root missing" in err
    argv = ["bench", "--dataset", csv, "--image-root", str(image_csv / "images"), "--target", "nope"]
    code, _, err = _run([*argv, "--sensitive", "sex", *TINY], capsys)
    assert code == 2 and "target column 'nope' not found" in err and "available columns" in err


# ----------------------------------------------------------------------------------------------------- presets


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_gpu_preset_without_cuda_says_so_with_its_estimate(celeba, capsys):
    code, _, err = _run(["bench", "--preset", "mindiff-celeba", "--dataset", f"celeba:{celeba}"], capsys)
    assert code == 2
    assert "sized for a GPU and CUDA is not available here" in err and "--device cpu" in err
    assert "6 training images x 20 epochs x 7 model(s) x 3 method(s)" in err


def test_oxonfair_preset_prints_the_published_numbers_beside_ours(celeba, tmp_path, capsys):
    argv = ["bench", "--preset", "oxonfair-celeba", "--dataset", f"celeba:{celeba}", "--device", "cpu"]
    argv += ["--models", "resnet18", "--image-size", "16", "--epochs", "1", "--batch-size", "3", "--workers", "0"]
    code, printed, err = _run([*argv, "--amp", "none", "--quiet", "--no-plots", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    head = printed.split("Wearing_Earrings")[0] if "Wearing_Earrings" in printed else printed
    assert "estimated training time" in head
    assert "published unconstrained (resnet18): test accuracy 0.9104, test equal_opportunity gap 0.5091" in head
    assert "published thresholds (resnet18): test accuracy 0.9011, test equal_opportunity gap 0.0148" in head
    # the comparison table after the run: published error 1 - 0.9104 and violation 0.5091 - 0.01, then ours
    assert "published error" in printed and "0.090" in printed and "0.499" in printed
    assert "DeepFairPredictor" in (tmp_path / "study.md").read_text()


def test_presets_are_valid_with_a_local_celeba(celeba):
    for name, preset in IMAGE_PRESETS.items():
        config = preset.config(device="cpu", **({"dataset": f"celeba:{celeba}"} if preset.dataset_kind else {}))
        assert config.preset == name
    mindiff = IMAGE_PRESETS["mindiff-celeba"].config(dataset=f"celeba:{celeba}", device="cpu")
    widths = [int(m.rsplit("w", 1)[1]) for m in mindiff.models]
    assert widths == [5, 7, 9, 13, 19, 55, 64] and mindiff.image_size == 128 and mindiff.lr == 1e-4
    assert mindiff.batch_size == 128 and mindiff.constraint == "equal_opportunity"
    oxonfair = IMAGE_PRESETS["oxonfair-celeba"].config(dataset=f"celeba:{celeba}", device="cpu")
    assert oxonfair.target == "Wearing_Earrings" and oxonfair.tolerance == 0.01
    assert [round(1 - p.test_error, 4) for p in oxonfair.published] == [0.9104, 0.9011]


# --------------------------------------------------------------------------------------------- pieces by hand


def test_forward_flops_match_a_hand_count():
    # preact-resnet18-w1 at 8x8, 2 FLOPs per multiply-add of each convolution (stride 1 stem, 3x3 kernels):
    # stem 3->1 at 8x8: 2*3*9*64 = 3456; stage 1, four 1->1 convs at 8x8: 4 * 2*9*64 = 4608; stages 2-4 (2, 4, 8
    # channels at 4x4, 2x2, 1x1) each 4,096 (first conv, second conv, 1x1 shortcut, then two more convs); head 2*8.
    assert forward_flops("preact-resnet18-w1", 3, (8, 8)) == 3456 + 4608 + 3 * 4096 + 16
    # ResNet-18 (k = 64) at 128x128 costs 4096 times k = 1 at the same size, up to the stem and head (2724 k^2 rule)
    assert forward_flops("preact-resnet18-w64", 3, (128, 128)) == pytest.approx(1.7773e10, rel=1e-4)


def test_estimate_counts_three_passes_per_training_image_and_one_more_for_heldout_duals():
    config = ImageStudyConfig(models=("preact-resnet18-w1",), methods=("unconstrained", "lagrangian-heldout"))
    config = config.updated(epochs=2, records_per_run=5, image_size=8)
    sizes = {"train": 100, "validation": 50, "test": 50}
    per_image = 20368.0
    expected = per_image * ((3 + 4) * 100 * 2 + 2 * 5 * 200)
    assert estimate_seconds(config, sizes, flops_per_second=1.0) == pytest.approx(expected)


def test_heldout_batches_leave_batch_norm_statistics_and_the_mode_alone():
    model = create_image_model("preact-resnet18-w2", seed=0)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = iter([(torch.randn(4, 3, 8, 8), torch.tensor([0.0, 1.0, 1.0, 0.0]), torch.tensor([0, 1, 0, 1]))])
    out = heldout_batch(model, batches, image_forward(ImageStudyConfig()))
    assert model.training and out["scores"].shape == (4,) and out["scores"].dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
