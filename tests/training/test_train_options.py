"""The training options declared once (training/options.py): their flags, checks, start
line and resume rules, and the flags of issue 21 (--init, --pretrained, --freeze,
--unfreeze-after, --backbone-lr-scale, --clip-grad, --no-channels-last) doing what they say."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import yaml
from test_train import make_imagefolder, tiny
from torch import nn

import alexnet
import alexnet.training.run_setup as training_setup
from alexnet.cli import build_parser, main
from alexnet.models.registry import get_model
from alexnet.training.config import describe, resolve
from alexnet.training.engine import StepOptions, train_one_epoch
from alexnet.training.options import OPTIONS, RESUME_MAY_CHANGE, SET_ONLY, SHOWN

SRC = Path(alexnet.__file__).resolve().parent.parent


def parse_train(argv: list[str]) -> dict:
    args = build_parser().parse_args(["train", *argv])
    return {k: v for k, v in vars(args).items() if k not in ("func", "command")}


@pytest.fixture()
def data(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    return make_imagefolder(tmp_path / "data")


# ------------------------------------------------------------- the declarations


def test_every_declared_flag_reaches_its_key() -> None:
    """Each option with a help group has a flag in `alexnet train` and `alexnet lr-find`;
    the others are the keys --set lists."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("train", "lr-find"):
        dests = {a.dest for a in sub[command]._actions}
        for key, opt in OPTIONS.items():
            if key != "recipe":  # --recipe is the CLI's own flag (a layer, not a setting)
                assert (key in dests) == (opt.group is not None), (command, key)
    help_text = sub["train"].format_help()
    for key in SET_ONLY:
        assert key in help_text  # --set names the keys without a flag
    assert RESUME_MAY_CHANGE >= {"epochs", "device", "threads", "workers"}
    assert "grad_clip" in SHOWN and "init_from" in SHOWN and "freeze" in SHOWN


def test_the_new_flags_parse_to_their_keys() -> None:
    got = parse_train(
        ["--init", "runs/a/model.safetensors", "--freeze", "all-but-head", "--unfreeze-after",
         "3", "--backbone-lr-scale", "0.1", "--clip-grad", "2", "--init-scheme", "xavier",
         "--no-channels-last"]
    )  # fmt: skip
    assert got == {
        "init_from": "runs/a/model.safetensors",
        "freeze": "all-but-head",
        "unfreeze_after": 3,
        "backbone_lr_scale": 0.1,
        "grad_clip": 2.0,
        "init": "xavier",
        "channels_last": False,
    }
    assert parse_train(["--pretrained"]) == {"init_from": "imagenet"}
    assert resolve(overrides=parse_train(["--freeze", "none"])).config.freeze is None


def test_the_declarations_import_no_torch() -> None:
    """`alexnet train --help` can be built without torch: the declarations and the flag
    building pull none in (the package's own __init__ still does; it is stood in for here)."""
    code = textwrap.dedent(
        f"""
        import sys, types
        pkg = types.ModuleType("alexnet"); pkg.__path__ = [{str(SRC / "alexnet")!r}]
        sys.modules["alexnet"] = pkg
        import alexnet.training.options, alexnet.cli.options
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
        print(heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--unfreeze-after", "2"], "--unfreeze-after needs frozen layers"),
        (["--backbone-lr-scale", "0.1"], "--backbone-lr-scale applies to loaded layers only"),
        (["--pretrained"], None),  # a run of the default recipe: fine (model alexnet)
        (["--pretrained", "--model", "alexnet_cifar"], "exist for --model alexnet only"),
        (["--clip-grad", "0"], "grad_clip must be positive"),
        (["--freeze", "head"], "invalid choice: 'head'"),
        (["--init", "a.pt", "--pretrained"], "--pretrained: not allowed with argument --init"),
    ],
)
def test_flags_that_do_not_apply_are_one_sentence(argv, says, capsys, monkeypatch) -> None:
    if says is None:
        cfg = resolve(overrides=parse_train(argv)).config
        assert cfg.model == "alexnet" and cfg.mean == cfg.std == "imagenet"
        return
    monkeypatch.setattr(sys, "argv", ["alexnet", "train", *argv])
    with pytest.raises(SystemExit) as e:
        sys.exit(main(["train", *argv]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("alexnet: error: ") and says in err
    assert err.count("\n") == 1


def test_the_start_line_shows_transfer_and_clipping() -> None:
    flags = parse_train(
        ["--init", "m.safetensors", "--freeze", "features", "--unfreeze-after", "2",
         "--clip-grad", "1.5"]
    )  # fmt: skip
    text = "\n".join(describe(resolve(overrides=flags), width=200))
    for shown in ("init from m.safetensors", "freeze features", "unfreeze after 2",
                  "grad clip 1.5"):  # fmt: skip
        assert shown in text
    assert "grad clip" not in "\n".join(describe(resolve(), width=200))
    shown = "\n".join(describe(resolve(overrides=parse_train(["--no-channels-last"])), width=200))
    assert "channels last False" in shown


# ----------------------------------------------------------------- --clip-grad


def test_clipping_changes_the_update() -> None:
    """One SGD step (no momentum): unclipped the weights move by lr x the gradient; with
    --clip-grad the move's norm is lr x NORM."""
    lr, clip = 0.5, 1e-3
    moves = {}
    for grad_clip in (None, clip):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        before = [p.detach().clone() for p in model.parameters()]
        x = torch.randint(0, 255, (8, 3, 2, 2), dtype=torch.uint8)
        y = torch.arange(8) % 3
        opts = StepOptions(lambda b: b.float() / 255, nn.CrossEntropyLoss(), torch.device("cpu"),
                           grad_clip=grad_clip)  # fmt: skip
        train_one_epoch(model, [(x, y)], torch.optim.SGD(model.parameters(), lr=lr), opts)
        moves[grad_clip] = torch.cat(
            [(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)]
        ).norm()
    assert moves[None] > 10 * lr * clip  # the gradient is far above the clip
    assert moves[clip] == pytest.approx(lr * clip, rel=1e-3)


def test_a_run_passes_clip_grad_to_its_steps(data, tmp_path, monkeypatch) -> None:
    seen = []
    real = training_setup.TrainingSetup.step_options

    def spy(self):
        options = real.fget(self)
        seen.append(options.grad_clip)
        return options

    monkeypatch.setattr(training_setup.TrainingSetup, "step_options", property(spy))
    alexnet.train(**tiny(data, tmp_path, name="clip", epochs=1, grad_clip=0.25))
    assert seen and set(seen) == {0.25}


# --------------------------------------------------------------- --no-channels-last


@pytest.mark.parametrize("channels_last", [False, True])
def test_no_channels_last_gives_nchw_batches_to_the_model(data, tmp_path, monkeypatch,
                                                          channels_last) -> None:  # fmt: skip
    layouts = set()

    def record(module, inputs):
        (x,) = inputs
        layouts.add(
            "nhwc" if x.is_contiguous(memory_format=torch.channels_last) else
            "nchw" if x.is_contiguous() else "other"
        )  # fmt: skip

    build = training_setup.build_model

    def hooked(cfg, num_classes, in_channels):
        model = build(cfg, num_classes, in_channels)
        model.register_forward_pre_hook(record)
        return model

    monkeypatch.setattr(training_setup, "build_model", hooked)
    result = alexnet.train(
        **tiny(data, tmp_path, name=f"cl-{channels_last}", epochs=1, channels_last=channels_last)
    )
    assert layouts == {"nhwc" if channels_last else "nchw"}  # training and evaluation
    weight = next(result_model_convs(result))
    assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last


def result_model_convs(result):
    model = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    return (v for k, v in model.items() if v.ndim == 4)


# ----------------------------------------------------- --init, --freeze and --resume


def test_transfer_flags_train_and_survive_resume(data, tmp_path, capsys) -> None:
    """--init FILE (a model file of ours) --freeze features --unfreeze-after 1 --clip-grad:
    the run records them, a resume keeps them, and a resume may not change them."""
    first = alexnet.train(**tiny(data, tmp_path, name="source", epochs=1))
    model_file = str(first.run_dir / "model.safetensors")
    runs = str(tmp_path / "runs")
    argv = ["train", "--dataset", "imagefolder", "--data", str(data), "--model",
            "alexnet_cifar", "--set", "model_kwargs={widths: [8, 8, 16, 16, 16], hidden: 32}",
            "--image-size", "16", "--batch-size", "8", "--epochs", "1", "--workers", "0",
            "--threads", "1", "--no-progress", "--run-dir", runs, "--name", "tuned",
            "--init", model_file, "--freeze", "features", "--unfreeze-after", "1",
            "--backbone-lr-scale", "0.5", "--clip-grad", "1"]  # fmt: skip
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())  # the start line, unwrapped
    assert "init from" in out and "freeze features" in out and "grad clip 1.0" in out
    run = tmp_path / "runs" / "tuned"
    keys = ("init_from", "freeze", "unfreeze_after", "backbone_lr_scale", "grad_clip")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert [saved[k] for k in keys] == [model_file, "features", 1, 0.5, 1.0]
    # the same flags again with --resume are fine; the saved ones hold without them too
    assert main(["train", "--resume", str(run), "--epochs", "2", "--clip-grad", "1"]) == 0
    assert [yaml.safe_load((run / "config.yaml").read_text())[k] for k in keys] == [
        saved[k] for k in keys
    ]
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3", "--clip-grad", "2"]) == 2
    assert "'grad_clip' cannot change" in capsys.readouterr().err


def test_freeze_all_but_head_trains_only_the_head(data, tmp_path) -> None:
    first = alexnet.train(**tiny(data, tmp_path, name="src2", epochs=1))
    init = torch.load(first.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    result = alexnet.train(
        **tiny(data, tmp_path, name="head", epochs=1, init_from=str(first.run_dir /
               "model.safetensors"), freeze="all-but-head")
    )  # fmt: skip
    after = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    logits = get_model("alexnet_cifar", num_classes=3, widths=(8, 8, 16, 16, 16), hidden=32)
    head = [k for k in after if k.startswith(logits.layer_names["logits"] + ".")]
    moved = {k for k in after if not torch.equal(after[k], init[k])}
    assert moved and moved <= set(head) | {k for k in after if "num_batches" in k}, moved


# ------------------------------------------------------- --pretrained, the hub cache


IMAGENET_FILE = "alexnet-owt-7be5be79.pth"


@pytest.fixture()
def offline(monkeypatch):
    def no_network(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)


README_TRANSFER = ["train", "--init", "imagenet", "--freeze", "features", "--unfreeze-after", "5"]


def test_pretrained_offline_says_where_it_looked(tmp_path, monkeypatch, offline, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.chdir(tmp_path)
    assert main([*README_TRANSFER, "--threads", "1"]) == 2
    err = capsys.readouterr().err
    cached = tmp_path / "th" / "hub" / "checkpoints" / IMAGENET_FILE
    assert err.startswith("alexnet: error: ImageNet weights for alexnet are not in the torch hub")
    assert f"run `curl -L --create-dirs -o {cached} https://" in err and err.count("\n") == 1


@pytest.mark.slow
def test_readme_transfer_line_trains_with_weights_in_the_hub_cache(
    tmp_path, monkeypatch, offline, capsys
) -> None:
    """README's line as written, with torchvision's weights file (here a random AlexNet's
    state dict) in the hub cache: the run starts from those weights, features frozen. The
    first epoch is cut short by a Ctrl-C after two steps (the run saves and exits 130)."""
    home = tmp_path / "th"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(3)
    state = get_model("alexnet").state_dict()
    torch.save(state, home / "hub" / "checkpoints" / IMAGENET_FILE)
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    seen = {}
    import alexnet.training.run as loop

    real = loop.train_one_epoch

    def two_steps(model, loader, optimizer, options, **kw):
        seen["conv1"] = model.features[0].weight.detach().clone()
        seen["frozen"] = not model.features[0].weight.requires_grad
        seen["in_channels"] = model.features[0].in_channels
        calls = iter(range(10**6))

        def stop() -> bool:  # as a Ctrl-C after the second step
            return next(calls) >= 1

        return real(model, loader, optimizer, options, **{**kw, "should_stop": stop})

    monkeypatch.setattr(loop, "train_one_epoch", two_steps)
    code = main([*README_TRANSFER, "--threads", "1", "--no-progress"])
    assert code == 130, capsys.readouterr().err
    assert torch.equal(seen["conv1"], state["features.0.weight"])
    assert seen["frozen"] and seen["in_channels"] == 3
