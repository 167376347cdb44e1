"""fairopt.vision: image models by name ((N,) logits, widths, pre-activation blocks, local weights only, no network),
training under a constraint, bf16 autocast on CPU, channels-last."""

from __future__ import annotations

import socket
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fairopt
from fairopt.vision import (
    BinaryLogits,
    PreActBlock,
    PreActResNet,
    autocast,
    create_image_model,
    list_image_models,
    move_images,
    prepare_model,
)

pytest.importorskip("timm")
pytest.importorskip("torchvision")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection, or to call the download functions of torch, timm or huggingface_hub, fails
    the test (so a passing test did not download)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    import timm.models._builder as builder
    import torch.hub

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    for name in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file"):
        monkeypatch.setattr(builder, name, refuse)


def test_the_network_guard_catches_a_download(no_network):
    import timm

    with pytest.raises(AssertionError, match="network access attempted"):
        timm.create_model("test_resnet", pretrained=True)  # what create_image_model must never do


def _preact_parameters(k: int, stem: str = "cifar") -> int:
    """Hand count of PreActResNet18(k) with batch norm (2 parameters per channel) and one output unit.

    Stem: 3x3 conv 3 -> k (27k), or 7x7 conv 3 -> k plus its norm (147k + 2k). A block (c_in -> c_out) has
    norm1 (2 c_in), conv1 (9 c_in c_out), norm2 (2 c_out), conv2 (9 c_out²), and a 1x1 projection (c_in c_out) when
    the shape changes. Stage 1: 2 blocks k -> k: 36k² + 8k. Stage 2: (k -> 2k) 56k² + 6k, (2k -> 2k) 72k² + 8k.
    Stage 3: 224k² + 12k, 288k² + 16k. Stage 4: 896k² + 24k, 1152k² + 32k. Final norm 16k, linear 8k + 1.
    """
    stem_count = 27 * k if stem == "cifar" else 149 * k
    return 2724 * k * k + 130 * k + stem_count + 1


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name",
    ["preact-resnet18-w4", "test_resnet", "test_vit", "torchvision:resnet18", "torchvision:mobilenet_v3_small"],
)
def test_every_family_gives_n_float32_logits(name, no_network):
    model = create_image_model(name, seed=0).eval()
    x = torch.randn(2, 3, 32, 32) if name != "test_vit" else torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert isinstance(model, PreActResNet if name.startswith("preact") else BinaryLogits)


@pytest.mark.parametrize(("k", "stem"), [(1, "cifar"), (2, "cifar"), (4, "cifar"), (2, "imagenet"), (3, "imagenet")])
def test_width_scales_the_parameter_count_as_counted_by_hand(k, stem):
    assert _count(create_image_model(f"preact-resnet18-w{k}", stem=stem)) == _preact_parameters(k, stem)


@pytest.mark.parametrize("k", [1, 3])
def test_without_the_final_norm_it_is_the_layout_nakkiran_et_al_adapted(k):
    model = create_image_model(f"preact-resnet18-w{k}", final_norm=False, seed=0)
    assert _count(model) == _preact_parameters(k) - 16 * k  # no final norm over the 8k channels of the last stage
    assert isinstance(model.norm, nn.Identity) and model(torch.randn(2, 3, 16, 16)).shape == (2,)
    captured = []
    model.layer4.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 16, 16))
    pooled = captured[-1].mean(dim=(2, 3))  # the raw residual sum, pooled: no ReLU either
    assert torch.allclose(out, model.fc(pooled).squeeze(-1), atol=1e-6)


def test_width_64_is_the_standard_resnet18_and_width_can_be_an_argument():
    assert _preact_parameters(64) == 11_167_553 == _count(create_image_model("preact-resnet18"))
    a = create_image_model("preact-resnet18", width=8, seed=1)
    b = create_image_model("preact-resnet18-w8", seed=1)
    assert a.width == b.width == 8
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))  # same seed


def test_stages_have_k_2k_4k_8k_channels_and_halve_the_resolution():
    model = create_image_model("preact-resnet18-w3")
    shapes = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    model(torch.randn(2, 3, 32, 32))
    assert shapes == [(2, 3, 32, 32), (2, 6, 16, 16), (2, 12, 8, 8), (2, 24, 4, 4)]


def test_preact_block_normalizes_before_each_convolution_and_adds_the_raw_input():
    torch.manual_seed(0)
    identity, projection = PreActBlock(4, 4).eval(), PreActBlock(4, 8, stride=2).eval()
    assert identity.shortcut is None and projection.shortcut.kernel_size == (1, 1)
    for block in (identity, projection):
        for norm in (block.norm1, block.norm2):  # non-trivial eval statistics, so the order matters
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        for block in (identity, projection):
            h = F.relu(block.norm1(x))
            skip = x if block.shortcut is None else block.shortcut(h)
            expected = block.conv2(F.relu(block.norm2(block.conv1(h)))) + skip
            assert torch.allclose(block(x), expected, atol=1e-6)
        identity.conv2.weight.zero_()
        assert torch.equal(identity(x), x)  # the identity path carries x untouched (no norm or ReLU after the sum)
        projection.conv2.weight.zero_()
        assert torch.allclose(projection(x), projection.shortcut(F.relu(projection.norm1(x))), atol=1e-6)
        assert projection(x).shape == (2, 8, 4, 4)


@pytest.mark.parametrize("norm", ["group", "none"])
def test_other_norms_and_channel_counts(norm):
    model = create_image_model("preact-resnet18-w5", norm=norm, in_chans=1, seed=0)
    assert model(torch.randn(2, 1, 20, 24)).shape == (2,)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, H, W\), got \(2, 3, 20, 24\)"):
        model(torch.randn(2, 3, 20, 24))


@pytest.mark.parametrize("amp", [None, "bf16"])
def test_two_constrained_training_steps_change_the_parameters_and_stay_finite(amp):
    model = create_image_model("preact-resnet18-w4", seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=gen)
    y = torch.tensor([0, 1] * 8)
    a = torch.tensor([0] * 8 + [1] * 8)
    x[a == 1] += 1.0  # the groups look different, so the model's rates differ between them after one step
    opt = fairopt.ConstrainedOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-2),
        [fairopt.EqualizedOdds(0.0)],
        num_groups=2,
        dual_lr=0.5,
        dual_min_count=None,  # the dual reads each batch, so the multipliers move at once
    )
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        with autocast("cpu", amp):  # bf16 convolutions on the CPU; the logits come back float32
            logits = model(x)
        assert logits.dtype == torch.float32
        opt.zero_grad()
        result = opt.step(loss=F.binary_cross_entropy_with_logits(logits, y.float()), scores=logits, labels=y, groups=a)
        assert torch.isfinite(result.loss) and torch.isfinite(result.value.hard).all()
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert sum(not torch.equal(p, q) for p, q in zip(before, after)) == len(before)  # every tensor moved
    assert torch.isfinite(opt.multipliers).all() and (opt.multipliers >= 0).all() and opt.multipliers.sum() > 0


def test_gradient_accumulation_of_an_image_model_equals_the_whole_batch_step():
    """ConstrainedOptimizer.step_accumulated over 2 micro-batches of 4 images = step on the 8 (GroupNorm: each image is
    normalized on its own, so the micro-batches see what the whole batch sees)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, 16, 16, generator=gen)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    a = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    models, opts = [], []
    for _ in range(2):
        model = create_image_model("preact-resnet18-w2", norm="group", seed=0).double()
        with torch.no_grad():  # centre the logits so that some positives are missed: the TPRs differ, the dual moves
            model.fc.bias -= model(x.double()).median()
        opt = fairopt.ConstrainedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            [fairopt.EqualOpportunity(0.0)],
            2,
            dual_lr=0.5,
            dual_min_count=None,
        )
        models.append(model)
        opts.append(opt)

    def forward(batch):
        xb, yb, ab = batch
        scores = models[1](xb.double())
        return {
            "loss": F.binary_cross_entropy_with_logits(scores, yb.double()),
            "scores": scores,
            "labels": yb,
            "groups": ab,
        }

    for _ in range(3):
        scores = models[0](x.double())
        opts[0].zero_grad()
        opts[0].step(loss=F.binary_cross_entropy_with_logits(scores, y.double()), scores=scores, labels=y, groups=a)
        opts[1].zero_grad()
        opts[1].step_accumulated(list(zip(x.split(4), y.split(4), a.split(4))), forward)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(opts[0].multipliers, opts[1].multipliers)
    assert opts[0].multipliers.sum() > 0  # the constraint was active: the test compares constrained steps


def test_bf16_autocast_on_cpu_runs_convolutions_in_bf16_and_returns_float32_logits():
    model = create_image_model("preact-resnet18-w4", seed=0).eval()
    dtypes = []
    model.layer1[0].conv1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        with autocast("cpu", "bf16"):
            mixed = model(x)
        with autocast("cpu", None):
            again = model(x)
    assert dtypes == [torch.float32, torch.bfloat16, torch.float32]
    assert mixed.dtype == torch.float32 and torch.equal(full, again)
    assert not torch.equal(mixed, full) and torch.allclose(mixed, full, rtol=0.1, atol=0.1)


def test_a_constrained_step_under_cpu_autocast():
    model = create_image_model("test_resnet", seed=0)
    opt = fairopt.ConstrainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [fairopt.EqualOpportunity(0.05)], 2)
    x, y, a = torch.randn(8, 3, 32, 32), torch.tensor([0, 1] * 4), torch.tensor([0, 0, 1, 1] * 2)
    with autocast("cpu", "bf16"):
        logits = model(x)
    opt.zero_grad()
    opt.step(loss=F.binary_cross_entropy_with_logits(logits, y.float()), scores=logits, labels=y, groups=a)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(("amp", "device", "match"), [("fp8", "cpu", "amp must be one of"), ("fp16", "cpu", "CUDA")])
def test_autocast_refuses_what_it_cannot_do(amp, device, match):
    with pytest.raises(ValueError, match=match):
        autocast(device, amp)


def test_channels_last_model_and_images_give_the_same_logits():
    model = create_image_model("preact-resnet18-w4", seed=0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        # on the CPU, the narrow shortcuts' channels-last backward is oneDNN#6035 (an abort): asked for, it warns
        # (layer3's shortcut has 8 input channels: below the block with AVX-512 only)
        with pytest.warns(UserWarning, match=r"channels_last=True on the CPU with layer2\.0\.shortcut(, "
                          r"layer3\.0\.shortcut)?: 1x1 convolutions .*oneDNN#6035") as caught:  # fmt: skip
            prepared = prepare_model(model, channels_last=True)
        assert caught[0].filename == __file__
        images = move_images(x, "cpu", channels_last=True)
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert prepared.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(prepared(images), reference, atol=1e-5)
    with pytest.raises(ValueError, match="compile=False"):
        prepare_model(model, compile_options={"mode": "max-autotune"})
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        move_images(torch.zeros(3, 4, 4), "cpu")


def test_channels_last_is_the_default_on_cuda_only():
    """The CPU default keeps the model and the images channels-first: oneDNN's channels-last backward of a strided
    1x1 convolution with 2 to 7 input channels (the shortcuts of preact-resnet18-w4) aborts torch 2.14.1."""
    model = prepare_model(create_image_model("preact-resnet18-w4", seed=0))
    weight = model.layer2[0].conv1.weight  # 3x3 (a 1x1 weight is contiguous in both layouts)
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)
    images = move_images(torch.randn(2, 3, 8, 8), "cpu")
    assert images.is_contiguous() and not images.is_contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # wide enough: no layer below the block, no warning
        wide = prepare_model(create_image_model("preact-resnet18-w16", seed=0), channels_last=True)
    assert wide.layer2[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_default_layout_trains_a_narrow_resnet_on_the_cpu_without_aborting():
    """In a subprocess: the documented recipe (prepare_model, move_images, backward) with the defaults, on the model
    whose channels-last backward aborted the process ('double free or corruption')."""
    code = (
        "import torch, torch.nn.functional as F\n"
        "from fairopt.vision import create_image_model, move_images, prepare_model\n"
        "torch.set_num_threads(1)\n"
        "model = prepare_model(create_image_model('preact-resnet18-w4', seed=0))\n"
        "x, y = torch.randn(32, 3, 32, 32), torch.rand(32).round()\n"
        "for _ in range(3):\n"
        "    F.binary_cross_entropy_with_logits(model(move_images(x, 'cpu')), y).backward()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_compiled_model_matches_and_its_checkpoint_loads(tmp_path):
    model = create_image_model("preact-resnet18-w2", seed=0).eval()
    compiled = prepare_model(model, compile=True, compile_options={"backend": "eager"})  # no C compiler needed
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x))
    path = tmp_path / "compiled.pt"
    torch.save(compiled.state_dict(), path)  # keys "_orig_mod.…"
    loaded = create_image_model("preact-resnet18-w2", seed=1, checkpoint_path=path).eval()
    weights = loaded.state_dict()
    assert all(torch.equal(value, weights[key]) for key, value in model.state_dict().items())  # the same weights
    # prepare_model kept `model` channels-first on the CPU (its default there): compare in the same layout (a
    # channels-last conv may round differently, ~3e-8, on some CPUs' kernels)
    assert model.stem.weight.is_contiguous() and not model.stem.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("resnet81", "close names: resnet18"),
        ("torchvision:resnet81", "close names: torchvision:resnet18"),
        ("Resnet_18", "close names: resnet18;"),  # case and separators aside: that one name
        ("preactresnet18-w1", "close names: preact-resnet18-w1;"),  # any width, though only the paper's are listed
        ("PreAct_ResNet18", "close names: preact-resnet18;"),
        ("preact-resnet18-w0", "width of 'preact-resnet18-w0' must be an int >= 1"),
        ("hf-hub:timm/resnet18.a1_in1k", "would download"),
        ("foo:bar", "unknown model source"),
    ],
)
def test_unknown_names_are_refused_with_suggestions(name, match, no_network):
    with pytest.raises(ValueError, match=match):
        create_image_model(name)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="names width 8 but width=4"):
        create_image_model("preact-resnet18-w8", width=4)
    with pytest.raises(ValueError, match="width= applies to preact-resnet18 only"):
        create_image_model("resnet18", width=4)
    with pytest.raises(ValueError, match="in_chans must be an int >= 1"):
        create_image_model("preact-resnet18-w2", in_chans=0)
    with pytest.raises(ValueError, match="torchvision models take 3-channel images"):
        create_image_model("torchvision:resnet18", in_chans=1)
    # timm raised a bare "got multiple values for keyword argument 'num_classes'"
    for name in ("resnet18", "preact-resnet18-w2", "torchvision:resnet18"):
        with pytest.raises(ValueError, match=r"sets num_classes itself: every model is a binary classifier"):
            create_image_model(name, num_classes=2)


@pytest.mark.parametrize("name", ["preact-resnet18-w2", "test_resnet", "torchvision:mobilenet_v3_small"])
def test_pretrained_without_a_local_file_is_an_error_not_a_download(name, no_network):
    with pytest.raises(ValueError, match=r"needs pretrained_file= .* never downloads"):
        create_image_model(name, pretrained=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_image_model(name, pretrained_file="/nonexistent/weights.pth")


def test_timm_pretrained_weights_from_a_local_file(tmp_path, no_network):
    import timm

    torch.manual_seed(3)
    source = timm.create_model("test_resnet", num_classes=1000)  # as the ImageNet weights are saved
    path = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), path)
    model = create_image_model("test_resnet", pretrained_file=path, seed=0)
    saved = source.state_dict()
    loaded = model.net.state_dict()
    head = {k for k in loaded if loaded[k].shape != saved[k].shape}
    assert head == {"fc.weight", "fc.bias"} and loaded["fc.weight"].shape == (1, saved["fc.weight"].shape[1])
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded if k not in head)  # the backbone is the file's
    gray = create_image_model("test_resnet", pretrained_file=path, in_chans=1)
    stem = gray.net.state_dict()["conv1.0.weight"]  # timm adapts the RGB stem to one channel by summing its filters
    assert stem.shape[1] == 1 and torch.allclose(stem, saved["conv1.0.weight"].sum(dim=1, keepdim=True))
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2,)
    # RGB images into the one-channel model: what to change, not the stem's weight-shape error
    with pytest.raises(ValueError, match=r"shape \(N, 1, H, W\), got \(2, 3, 32, 32\); .*in_chans=3"):
        gray(torch.randn(2, 3, 32, 32))
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), other)
    with pytest.raises(
        ValueError, match=r"cannot load the pretrained weights .*other\.pth' into timm model 'test_resnet'"
    ):
        create_image_model("test_resnet", pretrained_file=other)


def test_torchvision_pretrained_weights_from_a_local_file_replace_the_head(tmp_path, no_network):
    import torchvision

    torch.manual_seed(4)
    source = torchvision.models.mobilenet_v3_small(weights=None)  # 1000 classes
    path = tmp_path / "mobilenet.pth"
    torch.save({"state_dict": source.state_dict()}, path)  # a nested file, as training scripts write
    model = create_image_model("torchvision:mobilenet_v3_small", pretrained_file=path, seed=0)
    saved, loaded = source.state_dict(), model.net.state_dict()
    changed = {k for k in loaded if loaded[k].shape != saved[k].shape}
    assert changed == {"classifier.3.weight", "classifier.3.bias"}
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded if k not in changed)
    other = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(ValueError, match=r"does not fit this MobileNetV3: missing .*; unexpected"):
        create_image_model("torchvision:mobilenet_v3_small", pretrained_file=other)


def test_checkpoint_path_restores_the_model_and_refuses_another_width(tmp_path):
    model = create_image_model("test_resnet", seed=0).eval()
    path, bare = tmp_path / "model.pt", tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)  # keys "net.…"
    torch.save({"model": model.net.state_dict()}, bare)  # the bare timm network, nested
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for file in (path, bare):
            assert torch.equal(create_image_model("test_resnet", seed=1, checkpoint_path=file).eval()(x), model(x))
    narrow = tmp_path / "w2.pt"
    torch.save(create_image_model("preact-resnet18-w2").state_dict(), narrow)
    with pytest.raises(ValueError, match=r"checkpoint_path .*w2.pt' does not fit this PreActResNet: other shapes"):
        create_image_model("preact-resnet18-w3", checkpoint_path=narrow)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot read checkpoint_path .*junk\.pt"):
        create_image_model("preact-resnet18-w2", checkpoint_path=junk)


def test_the_registry_lists_every_source_and_filters():
    names = list_image_models()
    assert {"preact-resnet18-w5", "preact-resnet18-w64", "resnet18", "torchvision:resnet18"} <= set(names)
    assert list_image_models("preact-*") == ["preact-resnet18"] + [
        f"preact-resnet18-w{k}" for k in (5, 7, 9, 13, 19, 55, 64)
    ]
    assert "torchvision:resnet18" not in list_image_models("resnet18*", sources=("timm",))
    with pytest.raises(ValueError, match="unknown model sources"):
        list_image_models(sources=("keras",))
