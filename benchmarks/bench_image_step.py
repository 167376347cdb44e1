"""Image models: a constrained training step vs a plain step of ResNet-18, and the JPEG data path vs the step.

Run::

    python -m pytest benchmarks/bench_image_step.py --benchmark-only

* **Step.** timm's ``resnet18`` (one output unit, via :func:`fairopt.vision.create_image_model`), batch 64 of
  3x64x64 images, Adam, on the CPU: a plain step (``zero_grad``, forward, BCE, ``backward``, ``step``) and the same
  step through :class:`fairopt.ConstrainedOptimizer` with equalized odds over 2 groups and a dual step on every
  step (the worst case), Lagrangian and proxy-Lagrangian. Target: constrained / plain <= 1.05. The fairness part
  costs the same few milliseconds as for a small MLP (``bench_step_overhead.py``): next to a ResNet's step it is
  below the noise of a shared machine, so the summary also measures it alone ("wrapper ms": the constrained minus
  the plain step of a one-parameter model on the same batch, many interleaved blocks) and prints
  ``1 + wrapper / plain``, the ratio the step would have without noise. Nothing in the wrapper scales with the model.
* **Data path.** Images per second through fairopt's own loader, ``load_image_csv(...).loader("train", 64,
  num_workers=w)`` (the file read, ``torchvision.io.decode_image``, the ``transforms.v2`` resize and ImageNet
  normalization of :mod:`fairopt.datasets.image_io`, the default collate), over JPEG files written to a temporary
  directory, with 0 and 2 worker processes, for 64x64 files and for CelebA-sized 178x218 files resized to 64x64; the
  summary compares each with the images per second of the plain step (data / step > 1: the loader keeps up with
  training on this machine).

Tables: pytest-benchmark's, the same-run ratios of ``benchmarks/conftest.py``, and a summary at the end with the
minima over interleaved plain/constrained blocks (robust to load drifting during the run) and the data-path rates.
``FAIROPT_BENCH_THREADS`` sets torch's thread count (default 1: on a shared 2-core machine, 2 OpenMP threads make
timings swing).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from step_variants import training_step  # benchmarks/ is on sys.path under pytest (rootdir conftest)
from torch import Tensor, nn

from fairopt.datasets import ImageDataset, load_image_csv
from fairopt.vision import create_image_model

pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
from torchvision.io import write_jpeg  # noqa: E402

MODEL, BATCH, SIZE = "resnet18", 64, 64
GROUP = f"{MODEL} {SIZE}x{SIZE} batch {BATCH}"
VARIANTS: dict[str, dict[str, object] | None] = {
    "plain": None,
    "lagrangian": {"method": "lagrangian"},
    "proxy_lagrangian": {"method": "proxy_lagrangian"},
}
# torchvision 0.29 marks its image decoding deprecated in favour of TorchCodec; it is still the decoder installed here.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
NUM_FILES = 256  # 4 batches per pass
SOURCES = {"64x64 jpeg": (64, 64), "178x218 jpeg -> 64x64": (218, 178)}  # (H, W); CelebA's aligned faces are 178x218


def make_step(
    variant: str, *, model: nn.Module | None = None, shape: tuple[int, ...] | None = None
) -> Callable[[], None]:
    """One training step of ``variant`` on a fixed batch (``model`` default: the ResNet-18 of this benchmark)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*(shape or (BATCH, 3, SIZE, SIZE)), generator=gen)
    y = (torch.rand(BATCH, generator=gen) < 0.3).float()
    a = torch.randint(0, 2, (BATCH,), generator=gen)
    model = create_image_model(MODEL, seed=0) if model is None else model
    base = torch.optim.Adam(model.parameters(), lr=1e-3)
    return training_step(model, base, x, y, a, VARIANTS[variant])


class Shift(nn.Module):
    """A one-parameter "model" ``(N,) -> (N,)``: the steps through it cost what the wrapper costs, without a network."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


def interleaved_ms(
    first: Callable[[], None], second: Callable[[], None], budget_s: float, min_rounds: int = 10
) -> tuple[float, float, float]:
    """Time two steps in alternating blocks (one step per block for slow steps, about 50 ms of steps for fast ones),
    for ``budget_s`` seconds and at least ``min_rounds`` rounds.

    Returns:
        Each function's minimum per-step time (ms), and the median over rounds of the ratio second / first of the
        blocks run side by side: with load drifting on a shared machine, the paired ratio is the steadier figure.
    """
    start = time.perf_counter()
    first()
    second()
    n = max(1, int(0.05 / (time.perf_counter() - start)))
    times: list[tuple[float, float]] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(times) < min_rounds:
        pair = []
        for fn in (first, second):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            pair.append((time.perf_counter() - t) / n)
        times.append((pair[0], pair[1]))
    ratio = statistics.median(b / a for a, b in times)
    return min(a for a, _ in times) * 1e3, min(b for _, b in times) * 1e3, ratio


@pytest.fixture(scope="module", autouse=True)
def threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("FAIROPT_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ImageDataset]:
    """Per source, ``NUM_FILES`` smooth random images (noise would compress, and decode, unlike photographs) written as
    quality-90 JPEGs, loaded as an image dataset through a metadata table (all files train; two more rows make the
    held-out splits the loader requires)."""
    gen = torch.Generator().manual_seed(0)
    out: dict[str, ImageDataset] = {}
    for source, (h, w) in SOURCES.items():
        folder = tmp_path_factory.mktemp(source.split()[0])
        for i in range(NUM_FILES):
            coarse = torch.rand(1, 3, 8, 8, generator=gen)
            image = (F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0] * 255).to(torch.uint8)
            write_jpeg(image, str(folder / f"{i:06d}.jpg"), quality=90)
        rows = [*range(NUM_FILES), 0, 1]
        frame = pd.DataFrame(
            {
                "path": [f"{i:06d}.jpg" for i in rows],
                "label": [i % 2 for i in rows],
                "group": [(i // 2) % 2 for i in rows],
                "split": ["train"] * NUM_FILES + ["validation", "test"],
            }
        )
        out[source] = load_image_csv(
            frame, folder, "path", "label", "group", split_column="split", image_size=(SIZE, SIZE)
        )
    return out


@pytest.fixture(scope="module")
def summary(request: pytest.FixtureRequest) -> Iterator[dict[str, dict[str, tuple[float, ...]]]]:
    rows: dict[str, dict[str, tuple[float, ...]]] = {"step": {}, "data": {}}
    yield rows
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        threads = torch.get_num_threads()
        if rows["step"]:
            reporter.write_sep("-", f"{GROUP}: constrained vs plain step (interleaved minima, {threads} thread(s))")
            reporter.write_line(
                f"{'variant':18s} {'plain ms':>9s} {'step ms':>9s} {'ratio':>6s} {'paired':>6s} {'images/s':>9s} "
                f"{'wrapper ms':>10s} {'1 + wrapper/plain':>17s}"
            )
            for variant, (plain, step, paired, wrapper) in rows["step"].items():
                reporter.write_line(
                    f"{variant:18s} {plain:9.1f} {step:9.1f} {step / plain:6.3f} {paired:6.3f} "
                    f"{BATCH / step * 1e3:9.1f} {wrapper:10.2f} {1 + wrapper / plain:17.4f}"
                )
            reporter.write_line(
                "ratio: of the minima; paired: median over rounds of the constrained / plain time of the blocks run "
                "side by side"
            )
            reporter.write_line(
                "wrapper ms: constrained minus plain step of a 1-parameter model on the same batch (interleaved "
                "minima): the wrapper's cost, which does not grow with the network"
            )
        plain_rate = rows.get("plain_rate", {}).get("plain", (float("nan"),))[0]
        if rows["data"]:
            reporter.write_sep("-", f"data path: JPEG decode + resize + normalize, batch {BATCH}")
            reporter.write_line(f"{'source':24s} {'workers':>7s} {'images/s':>9s} {'data / plain step':>18s}")
            for key, (workers, rate) in rows["data"].items():
                reporter.write_line(f"{key.split('|')[0]:24s} {int(workers):7d} {rate:9.1f} {rate / plain_rate:18.2f}")


def median_seconds(benchmark, fn: Callable[[], object], rounds: int = 3) -> float:
    """The median time of ``fn`` that pytest-benchmark measured; with ``--benchmark-disable`` (no statistics), the
    median of ``rounds`` calls timed here."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        return stats.stats.median
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_image_step(benchmark, summary, variant: str) -> None:
    benchmark.group = GROUP
    benchmark.extra_info["impl"] = "plain_step" if variant == "plain" else variant  # see benchmarks/conftest.py
    step = make_step(variant)
    for _ in range(2):
        step()
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    if variant == "plain":
        summary["plain_rate"] = {"plain": (BATCH / median_seconds(benchmark, step),)}
    else:
        plain_ms, step_ms, paired = interleaved_ms(make_step("plain"), step, budget_s=8.0, min_rounds=12)
        logits = (BATCH,)
        floor, wrapped, _ = interleaved_ms(
            make_step("plain", model=Shift(), shape=logits), make_step(variant, model=Shift(), shape=logits), 3.0
        )
        summary["step"][variant] = (plain_ms, step_ms, paired, wrapped - floor)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("source", list(SOURCES))
def test_data_path(benchmark, summary, image_sets, source: str, workers: int) -> None:
    benchmark.group = f"data path {source}"
    benchmark.extra_info["impl"] = f"workers={workers}"
    loader = image_sets[source].loader("train", BATCH, num_workers=workers)  # persistent workers by default

    def one_pass() -> int:
        return sum(x.shape[0] for x, _, _ in loader)

    assert one_pass() == NUM_FILES  # also starts the persistent workers
    benchmark.pedantic(one_pass, rounds=3, warmup_rounds=0)
    rate = NUM_FILES / median_seconds(benchmark, one_pass)
    benchmark.extra_info["images_per_s"] = rate
    summary["data"][f"{source}|{workers}"] = (workers, rate)
