"""One name per concept across the programs (issues 21, 28): the new spellings, the old ones
refused with the new name, the retired train/test ``--refs``, no flag read from its prefix,
advanced switches behind --help_advanced, and the checkpoint module's names."""
from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

import predict
import test_few_shot
import train
from bench import benchmark, compare_sources, decisions, gpu_check, lot_cost, real_eval, summarize
from data import mvtec, synthetic, textures, visa
from models import checkpoint, fasl

REPO = Path(__file__).resolve().parent.parent

TRAIN = ["--save_path", "s", "--train_data_path", "d"]
TEST = ["--data_path", "d", "--save_path", "s", "--mode", "fd"]


def _exit_message(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


# every program's command-line entry, a command line it takes, and one of its flags (issue 28)
PROGRAMS = {
    "train.py": (train.parse_args, TRAIN, "--learning_rate"),
    "test_few_shot.py": (test_few_shot.parse_args, TEST, "--eval_size"),
    "predict.py": (predict.parse_args, ["--refs", "a", "--images", "b", "--out", "o"], "--mask_level"),
    "data/mvtec.py": (mvtec.parse_args, ["--data_root", "x"], "--data_root"),
    "data/visa.py": (visa.parse_args, ["--data_root", "x"], "--split"),
    "data/synthetic.py": (synthetic.parse_args, ["--out", "o"], "--n_train"),
    "data/textures.py": (textures.parse_args, ["--out", "o"], "--n_test"),
    "bench/benchmark.py": (benchmark.parse_args, [], "--n_images"),
    "bench/compare_sources.py": (compare_sources.parse_args, [], "--gen_classes"),
    "bench/real_eval.py": (real_eval.parse_args, ["--data_root", "d", "--weights", "w"], "--train_steps"),
    "bench/decisions.py": (decisions.parse_args, ["--data_root", "d", "--pretrained", "none"], "--mask_levels"),
    "bench/summarize.py": (summarize.parse_args, ["no_folder_here"], "--help"),
    "bench/gpu_check.py": (gpu_check.main, ["agreement", "--device", "cpu", "--out", "o"], "--device"),
    "bench/lot_cost.py": (lot_cost.main, ["--refs", "a", "--images", "b"], "--predict_args"),
}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_no_program_reads_a_prefix_as_its_flag(program, capsys):
    """A typo must never select another flag silently: every parser refuses a flag's prefix."""
    parse, argv, flag = PROGRAMS[program]
    prefix = flag[:-3]
    err = _exit_message(parse, [*argv, prefix, "1"], capsys)
    assert f"unrecognized arguments: {prefix}" in err


def _calls(*names):
    """(file, call) of every call of a function or method of these names in the project's code."""
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("tests", ".venv") or rel.parts[0].startswith("."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", None))
                if name in names:
                    yield str(rel), node


def test_every_parser_refuses_abbreviations():
    calls = list(_calls("ArgumentParser", "add_parser"))
    assert len(calls) >= 15
    loose = [f"{where}:{call.lineno}" for where, call in calls
             if not any(k.arg == "allow_abbrev" and getattr(k.value, "value", None) is False for k in call.keywords)]
    assert loose == [], f"parsers that would read a prefix as a flag: {loose}"


@pytest.mark.parametrize("parse, base", [(train.parse_args, TRAIN), (test_few_shot.parse_args, TEST)])
def test_refs_is_predicts_images_only(parse, base, capsys):
    """--refs in train / test once meant --refs_file; now it is refused with the right flag named
    (left undefined, argparse would read it as an abbreviation of --refs_file)."""
    err = _exit_message(parse, [*base, "--refs", "old.json"], capsys)
    assert "--refs is predict.py's reference images" in err and "--refs_file references.json" in err
    assert parse([*base, "--refs_file", "old.json"]).refs_file == "old.json"
    assert predict.parse_args(["--refs", "a", "b", "--images", "c", "--out", "o"]).refs == ["a", "b"]


def test_negations_follow_one_style(capsys):
    assert train.parse_args(TRAIN).input_bn is True
    assert train.parse_args([*TRAIN, "--no-input_bn"]).input_bn is False
    assert real_eval.parse_args(["--combine", "r.json", "--no-transductive"]).transductive is False
    text = _help(train.parse_args, [*TRAIN, "--help_advanced"], capsys)
    assert "--no-input_bn" in text and "--no_input_bn" not in text


# (program's entry, a command line it takes, the old spelling, the flag that replaced it): issue 28
RETIRED = [
    (train.parse_args, TRAIN, "--no_input_bn", "--no-input_bn"),
    (real_eval.parse_args, ["--combine", "r.json"], "--no_transductive", "--no-transductive"),
    (benchmark.parse_args, [], "--k", "--k_shot"),
    (compare_sources.parse_args, ["--aux_root", "a"], "--target_root", "--data_root"),
    (compare_sources.parse_args, [], "--workdir", "--out"),
    (mvtec.parse_args, ["--data_root", "x"], "--root", "--data_root"),
    (visa.parse_args, ["--data_root", "x"], "--root", "--data_root"),
]


@pytest.mark.parametrize("parse, argv, old, new", RETIRED, ids=[f"{r[2]}->{r[3]}" for r in RETIRED])
def test_old_spellings_are_refused_with_the_new_flag(parse, argv, old, new, capsys):
    """An old spelling is no longer read as the new flag: it stops with the flag to use."""
    err = _exit_message(parse, [*argv, old, "1"], capsys)
    assert f"{old} is now {new}" in err
    assert not re.search(re.escape(old) + r"(?![\w-])", _help(parse, argv, capsys))  # nor shown in --help


def test_no_flag_is_a_hidden_alias():
    """An old spelling is refused (utils/cli.py add_retired_flag), never read as a hidden duplicate."""
    hidden = []
    for where, call in _calls("add_argument"):
        if any(k.arg == "help" and getattr(k.value, "attr", None) == "SUPPRESS" for k in call.keywords):
            hidden.append(where)
    assert hidden == ["utils/cli.py"], hidden  # add_retired_flag's own add_argument


def test_shared_flags_take_their_defaults_from_one_place():
    """Issue 28.3: the scoring defaults are InferenceConfig's, the shared ones models/flags.py's
    constants; the benchmark's --align image_index and --batch_size 1 are its documented own."""
    from data.synthetic_train import CLEAN_RATE
    from models.fasl import InferenceConfig
    from models.flags import BATCH_SIZE, LEARNING_RATE, SEED, TRAIN_K_SHOT

    c = InferenceConfig()
    scoring = {"mode": c.mode, "nam": c.use_nam, "winmode": c.winmode, "win_size": c.win_size,
               "win_stride": c.win_stride, "win_weight": c.win_weight, "align": c.align, "win_radius": c.win_radius,
               "win_topk": c.win_topk, "search_precision": c.search_precision, "window_batch": c.window_batch}
    assert c.align == "exhaustive"  # the reference code's search, as the paper's scripts pass it
    test = vars(test_few_shot.parse_args([*TEST[:-2], "--checkpoint_path", "c.pth"]))
    assert {k: test[k] for k in scoring} == scoring
    assert (test["eval_size"], test["batch_size"], test["seed"]) == (c.out_size, BATCH_SIZE, SEED)
    mine = vars(predict.parse_args(["--refs", "a", "--images", "b", "--out", "o"]))
    assert {k: mine[k] for k in scoring if k != "mode"} == {k: v for k, v in scoring.items() if k != "mode"}
    assert (mine["batch_size"], mine["seed"]) == (BATCH_SIZE, SEED)
    bench = vars(benchmark.parse_args([]))
    assert {k: bench[k] for k in scoring} == {**scoring, "align": "image_index"}
    trained = train.parse_args(TRAIN)
    assert (trained.align, trained.batch_size, trained.seed, trained.k_shot, trained.learning_rate,
            trained.clean_rate) == (c.align, BATCH_SIZE, SEED, TRAIN_K_SHOT, LEARNING_RATE, CLEAN_RATE)
    real = real_eval.parse_args(["--combine", "r.json"])
    assert (real.batch_size, real.learning_rate, real.train_k, real.win_size, real.win_stride) == \
        (BATCH_SIZE, LEARNING_RATE, TRAIN_K_SHOT, c.win_size, c.win_stride)
    compare = compare_sources.parse_args([])
    assert (compare.batch_size, compare.seed, compare.clean_rate, compare.synth_kinds) == \
        (BATCH_SIZE, SEED, CLEAN_RATE, trained.synth_kinds)


@pytest.mark.parametrize("module", [mvtec, visa])
def test_builders_take_data_root(module, capsys):
    assert module.parse_args(["--data_root", "x"]).data_root == "x"
    err = _exit_message(module.parse_args, [], capsys)
    assert "the following arguments are required: --data_root" in err


def test_compare_sources_names(capsys):
    args = compare_sources.parse_args(["--data_root", "t", "--aux_root", "a", "--out", "o"])
    assert (args.data_root, args.aux_root, args.out) == ("t", "a", "o")
    assert compare_sources.parse_args([]).out == "bench_out/compare_sources"
    err = _exit_message(compare_sources.parse_args, ["--data_root", "t"], capsys)
    assert "give both --data_root and --aux_root" in err


def _help(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit):
        parse([*argv, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("parse, argv, everyday, advanced", [
    (train.parse_args, TRAIN,
     ("--train_data_path", "--save_path", "--anomaly_source", "--recipe", "--epoch", "--steps", "--model", "--device"),
     ("--class_batches", "--per_block_nam", "--input_bn", "--dice_smooth", "--features_list", "--batch_size",
      "--aug_rate", "--check_args")),
    (test_few_shot.parse_args, TEST,
     ("--data_path", "--checkpoint_path", "--k_shot", "--seeds", "--model", "--mode", "--winmode", "--win_weight"),
     ("--win_topk", "--win_radius", "--search_precision", "--window_batch", "--eval_size", "--smooth_sigma",
      "--transductive", "--features_list", "--check_args")),
])
def test_help_shows_the_everyday_flags_and_help_advanced_the_rest(parse, argv, everyday, advanced, capsys):
    """Issue 28.6: --help holds the everyday flags on one screen (test_few_shot.py keeps the scoring
    flags the paper's scripts set from positional arguments); the experiment switches, backbone
    details and the reference recipe's constants are behind --help_advanced, after the everyday ones."""
    text = _help(parse, argv, capsys)
    assert len(text.splitlines()) <= 60
    assert text.rstrip().endswith("--help_advanced")
    assert all("\n  " + flag in text for flag in everyday)
    described = [flag for flag in advanced if re.search(r"\n  " + re.escape(flag) + r"(?![\w-])", text)]
    assert described == []  # (--recipe's help may name one)
    full = _help(parse, [*argv, "--help_advanced"], capsys)
    last_everyday = max(full.index("\n  " + flag) for flag in everyday)
    for flag in advanced:
        assert full.index("\n  " + flag) > last_everyday, flag  # where the flag is described
    assert "--help_advanced" not in full


def test_the_hidden_flags_still_parse():
    """The shell scripts pass advanced flags (--check_args, --align, --search_precision, ...)."""
    args = train.parse_args([*TRAIN, "--aug_rate", "0.3", "--align", "image_index", "--check_args"])
    assert (args.aug_rate, args.align, args.check_args) == (0.3, "image_index", True)
    args = test_few_shot.parse_args([*TEST, "--search_precision", "exact", "--eval_size", "64", "--no-transductive"])
    assert (args.search_precision, args.eval_size, args.transductive) == ("exact", 64, False)


def test_build_parser_gives_every_flag_without_parsing():
    for module in (train, test_few_shot, predict):
        hidden, full = module.build_parser(), module.build_parser(show_advanced=True)
        assert {a.dest for a in hidden._actions} == {a.dest for a in full._actions}
        assert hidden.format_help().count("\n  --") < full.format_help().count("\n  --")


def test_docs_flags_md_is_what_the_parsers_say():
    """Issue 28.7: docs/flags.md is generated from the parsers (scripts/flag_tables.py); regenerated
    here in memory, it must be the file, so a flag and its documented row cannot drift."""
    from scripts import flag_tables

    text = (REPO / "docs" / "flags.md").read_text(encoding="utf-8")
    assert flag_tables.render() == text, "docs/flags.md is out of date: run python scripts/flag_tables.py"
    assert text.splitlines()[0] == flag_tables.HEADER and "python scripts/flag_tables.py" in flag_tables.HEADER
    for program in ("predict.py", "train.py", "test_few_shot.py", "bench/decisions.py"):
        assert f"\n## {program}\n" in text
    # one row per flag, by value; the advanced ones marked; retired spellings and -h left out
    assert "| `--eval_size` (advanced) | `240` | advanced: backbone, evaluation, outputs | side of the maps and masks " \
           "the metrics use (default: 240) |" in text
    assert "| `--save_path` | required | options | output: epoch_N.pth, train.log, references.json |" in text
    assert "--no_input_bn" not in text and "| `-h`" not in text
    train_rows = text.split("\n## train.py\n")[1].split("\n## ")[0].count("\n| `--")
    assert train_rows == len([a for a in train.build_parser(True)._actions
                              if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help"])


def test_predict_mode_help_without_argparse_internals(capsys):
    source = (predict.__file__ and open(predict.__file__).read())
    assert "_actions" not in source
    assert "merged with --checkpoint_path, fd otherwise" in " ".join(_help(predict.parse_args, ["--help_advanced"],
                                                                             capsys).split())


def test_checkpoint_names_have_one_home():
    for name in ("CheckpointMismatch", "read_checkpoint", "normalize_config", "CHECKPOINT_FORMAT"):
        assert getattr(fasl, name) is getattr(checkpoint, name)  # the old import path still works
    mine = {"family": "open_clip", "model": "m", "widths": [8], "depth": 2, "patch_size": 4, "blocks": [1],
            "activation": "gelu", "neighbourhood": 1, "border_pad": 0, "pretrained": None, "image_size": 16,
            "input_bn": True, "nam": "shared", "hidden_bias": False, "nam_residual": False, "fd_residual": False,
            "head_input": "deviation"}
    assert checkpoint.config_mismatches(mine, dict(mine)) == []
    other = {**mine, "blocks": [2], "pretrained": "openai", "image_size": 32}
    diffs = checkpoint.config_mismatches(mine, other, source="file")
    assert diffs[0] == "blocks: file has [2], this model has [1]" and "random and pretrained" in diffs[1]
    assert len(diffs) == 2  # the image size only counts for stored features
    assert len(checkpoint.config_mismatches(mine, other, same_image_size=True)) == 3


def test_scoring_checks_the_bank_and_restores_the_heads_mode_in_one_place():
    """predict and encode/score share one window-bank check and one eval/restore of the heads."""
    import torch

    from models import build_fasl
    from models.fasl import InferenceConfig

    model = build_fasl(model="fasl-tiny-vit", pretrained=None, blocks=[1, 2, 3, 4], image_size=56)
    torch.manual_seed(0)
    refs, images = torch.randn(1, 3, 56, 56), torch.randn(2, 3, 56, 56)
    bank = model.build_memory(refs)  # no windows
    windows = InferenceConfig(mode="fasl", winmode="mul", win_size=2, win_stride=2, align="exhaustive", out_size=16)
    model.heads.train()
    with pytest.raises(RuntimeError, match="winmode needs a memory bank built with windows"):
        model.predict(images, bank, windows)
    with pytest.raises(RuntimeError, match="winmode needs a memory bank built with windows"):
        model.score(model.encode(images, windows), bank, windows)
    assert model.heads.training  # restored after a refusal too
    plain = InferenceConfig(mode="fasl", align="exhaustive", out_size=16)
    a = model.predict(images, bank, plain)
    assert model.heads.training
    b = model.score(model.encode(images, plain), bank, plain)
    assert model.heads.training
    torch.testing.assert_close(a.score_map, b.score_map)
    model.nam_trained = False
    with pytest.raises(ValueError, match="trained without NAM"):
        model.score(model.encode(images, plain), bank, plain)
    assert model.heads.training
