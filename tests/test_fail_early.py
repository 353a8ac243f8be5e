"""Issue 20: fail early (every value and file checked before work starts), lose nothing (per-class
results and resume, no stray outputs, the fatal error in the log), one-line errors only for the
project's own input errors, and the CUDA precision path exercised on the CPU."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import test_few_shot
import train
from data.images import ImageReadError
from data.meta import load_meta
from models import build_fasl
from models import backbone as backbone_mod
from models.asl import GlobalBatchNorm1d, ScoreMaps
from models.backbone import build_backbone
from models.fasl import CheckpointMismatch, InferenceConfig, read_checkpoint
from models.memory import PatchMemory
from models.references import SavedReferences
from models.thresholds import Thresholds
from data.meta import MetaError
from utils.cli import InputError, InputFileNotFoundError, InputValueError, run_cli
from utils.misc import resolve_device

REPO = Path(__file__).resolve().parent.parent
TINY = ["--model", "fasl-tiny-vit", "--pretrained", "none", "--image_size", "112", "--features_list", "1", "2", "3",
        "4", "--device", "cpu"]
FD_TEST = ["--mode", "fd", "--k_shot", "1", "--seed", "3", "--eval_size", "32", "--batch_size", "4", *TINY]


def _exit(fn) -> str:
    with pytest.raises(SystemExit) as stop:
        run_cli(fn, "prog.py")
    return stop.value.code


def _raise(err):
    def main():
        raise err
    return main


# ----------------------------------------------------------------------------- which errors get one line

def test_own_input_errors_get_one_line_and_everything_else_its_traceback(capsys):
    assert _exit(_raise(InputValueError("bad\nvalue"))) == \
        "prog.py: error: bad value (FASL_DEBUG=1 shows the traceback)"
    assert _exit(_raise(InputFileNotFoundError("no x"))) == "prog.py: error: no x (FASL_DEBUG=1 shows the traceback)"
    assert "file not found: x.png" in _exit(_raise(ImageReadError("file not found: x.png")))
    # the input-error types are still the built-in kinds, so ``except ValueError`` keeps catching them
    assert issubclass(InputValueError, ValueError) and issubclass(InputFileNotFoundError, FileNotFoundError)
    assert issubclass(CheckpointMismatch, InputError) and issubclass(MetaError, InputError)
    # a plain ValueError / FileNotFoundError is not the user's, wherever it was raised (issue 28.4)
    for err in (ValueError("bug"), FileNotFoundError("bug")):
        with pytest.raises(type(err), match="bug"):
            run_cli(_raise(err), "prog.py")
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _exit(lambda: resolve_device("cuda"))
    # a RuntimeError of the project's own, a shape bug inside torch, a ValueError inside a library
    with pytest.raises(RuntimeError, match="internal"):
        run_cli(_raise(RuntimeError("internal")), "prog.py")
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        run_cli(lambda: torch.cat([torch.zeros(2, 3), torch.zeros(2, 4)], dim=0), "prog.py")
    with pytest.raises(ValueError, match="same shape"):
        run_cli(lambda: np.stack([np.zeros(2), np.zeros(3)]), "prog.py")


def test_a_value_error_of_the_projects_own_tensor_code_keeps_its_traceback(syn_datasets, tmp_path, monkeypatch):
    """Issue 28.4: a shape ValueError raised inside the project's own code is a bug, not an input
    error: run_cli lets it through with its traceback, and the run's log holds the traceback too."""
    from models.lfe import merge_windows, window_grid

    grid = window_grid((4, 4), 2, 2)
    with pytest.raises(ValueError, match=r"do not match 4 windows of 2") as caught:
        run_cli(lambda: merge_windows(torch.zeros(1, 3, 1, 2, 2), grid), "prog.py")
    assert caught.traceback[-1].path.name == "lfe.py"

    def broken(*a, **k):
        return merge_windows(torch.zeros(1, 3, 1, 2, 2), grid)

    monkeypatch.setattr(test_few_shot, "score_unit", broken)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="do not match"):
        run_cli(lambda: test_few_shot.main(["--data_path", str(syn_datasets["visa"]), "--save_path", str(out),
                                            *FD_TEST]), "test_few_shot.py")
    log = (out / "test.log").read_text()
    assert "Traceback" in log and "in merge_windows" in log


def test_input_errors_of_the_programs_stay_one_line(syn_datasets, mvtec_ckpt, tmp_path):
    """What the user gave wrong, one program each: a missing --data_path, more references than a
    class has good images, a checkpoint of another backbone, a --refs_file without the class, a
    resume with other settings, a dataset folder without classes, an unknown device."""
    from data import mvtec

    visa = ["--data_path", str(syn_datasets["visa"]), "--save_path", str(tmp_path / "t")]
    assert re.fullmatch(r"prog\.py: error: \S+meta\.json not found; .+ \(FASL_DEBUG=1 shows the traceback\)",
                        _exit(lambda: test_few_shot.main(["--data_path", str(tmp_path / "none"), "--save_path",
                                                          str(tmp_path / "t"), *FD_TEST])))
    assert re.fullmatch(r"prog\.py: error: k=9 reference images requested for class '\w+', but .+ has only 3 normal "
                        r"images \(FASL_DEBUG=1 shows the traceback\)",
                        _exit(lambda: test_few_shot.main([*visa, *FD_TEST, "--k_shot", "9"])))
    message = _exit(lambda: test_few_shot.main([*visa, "--mode", "fasl", "--checkpoint_path", str(mvtec_ckpt),
                                                "--eval_size", "32", *TINY, "--features_list", "1", "2", "3"]))
    assert message.startswith(f"prog.py: error: checkpoint {mvtec_ckpt} does not fit this backbone (")
    assert f"blocks: checkpoint {mvtec_ckpt} has [1, 2, 3, 4], this model has [1, 2, 3]" in message
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"references": {}}))
    assert _exit(lambda: test_few_shot.main([*visa, *FD_TEST, "--refs_file", str(refs)])).startswith(
        f"prog.py: error: {refs} has no references for class(es) [")
    (tmp_path / "run").mkdir()
    shutil.copy(mvtec_ckpt, tmp_path / "run" / "epoch_1.pth")
    assert _exit(lambda: train.main(["--train_data_path", str(syn_datasets["mvtec"]), "--save_path",
                                     str(tmp_path / "run"), "--k_shot", "1", "--batch_size", "6", "--seed", "8",
                                     *TINY, "--epoch", "2", "--resume"])).startswith(
        "prog.py: error: --resume: ")
    (tmp_path / "empty").mkdir()
    assert _exit(lambda: mvtec.main(["--data_root", str(tmp_path / "empty")])).startswith(
        f"prog.py: error: no class folders under {tmp_path / 'empty'}")
    assert _exit(lambda: resolve_device("gpu")) == \
        "prog.py: error: invalid device 'gpu': use 'cpu', 'cuda', 'cuda:N' or N (FASL_DEBUG=1 shows the traceback)"


def test_out_of_memory_keeps_its_traceback_and_says_what_lowers_memory(capsys):
    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError's name, as CUDA raises it
        pass

    message = _exit(_raise(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")))
    assert message.startswith("prog.py: error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)")
    assert "--batch_size" in message and "--window_batch" in message
    assert "Traceback" in capsys.readouterr().err


# ----------------------------------------------------------------------------- checked before work starts

def test_flags_that_cannot_work_are_refused_by_check_args(capsys):
    with pytest.raises(SystemExit):
        test_few_shot.main(["--data_path", "x", "--save_path", "y", *FD_TEST, "--winmode", "mul", "--win_size", "9",
                            "--check_args"])
    assert "--win_size 9 is larger than the patch grid: --image_size 112 / patch 14 = 8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--train_data_path", "x", "--save_path", "y", *TINY, "--image_size", "100", "--check_args"])
    assert "--image_size 100 is not a multiple of the patch size 14" in capsys.readouterr().err
    for flag in ("--epoch", "--batch_size"):
        with pytest.raises(SystemExit):
            train.main(["--train_data_path", "x", "--save_path", "y", *TINY, flag, "0", "--check_args"])
        assert f"{flag} must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--train_data_path", "x", "--save_path", "y", *TINY, "--features_list", "1", "9", "--check_args"])
    assert "--features_list [9] outside fasl-tiny-vit's blocks 1..4" in capsys.readouterr().err


def _dataset_with_missing_files(src: Path, dst: Path) -> list[str]:
    """A copy of ``src`` whose meta.json lists 7 files that are gone: the masks of the last class
    and images of both."""
    shutil.copytree(src, dst)
    meta = load_meta(dst)
    last = sorted(meta["test"])[-1]
    gone = [s["mask_path"] for s in meta["test"][last] if s["mask_path"]][:3]
    gone += [s["img_path"] for c in sorted(meta["test"]) for s in meta["test"][c]][:4]
    for p in gone:
        (dst / p).unlink()
    return gone


@pytest.mark.parametrize("program", ["train", "test"])
def test_every_missing_file_is_named_before_anything_runs(program, syn_datasets, tmp_path):
    data = tmp_path / "data"
    gone = _dataset_with_missing_files(syn_datasets["mvtec"], data)
    out = tmp_path / "out"
    if program == "train":
        run = lambda: train.main(["--train_data_path", str(data), "--save_path", str(out), "--epoch", "1",  # noqa: E731
                                  "--k_shot", "1", *TINY])
    else:
        run = lambda: test_few_shot.main(["--data_path", str(data), "--save_path", str(out), *FD_TEST])  # noqa: E731
    with pytest.raises(FileNotFoundError, match=r"7 file\(s\) listed in .*meta.json are missing under") as exc:
        run()
    listed = str(exc.value).split(": ", 1)[1]
    assert listed.endswith(" and 2 more") and sum(p in listed for p in gone) == 5
    assert not out.exists(), "a refused run must leave no output folder (no empty log, no references.json)"


@pytest.mark.parametrize("program", ["train", "test", "predict"])
def test_an_output_folder_that_is_a_file_is_refused_first(program, syn_datasets, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    good = sorted((syn_datasets["mvtec"]).rglob("*.png"))[0]
    if program == "train":
        run = lambda: train.main(["--train_data_path", str(syn_datasets["mvtec"]), "--save_path", str(taken), *TINY])  # noqa: E731
    elif program == "test":
        run = lambda: test_few_shot.main(["--data_path", str(syn_datasets["mvtec"]), "--save_path", str(taken),  # noqa: E731
                                          *FD_TEST])
    else:
        import predict

        run = lambda: predict.main(["--refs", str(good), "--images", str(good), "--out", str(taken), *TINY])  # noqa: E731
    with pytest.raises(FileExistsError, match=re.escape(f"{taken}: {taken} is an existing file; give a folder")):
        run()
    assert taken.read_text() == "mine"


def test_predict_refused_on_its_inputs_leaves_no_output_folder(tmp_path):
    import predict

    out = tmp_path / "out"
    with pytest.raises((FileNotFoundError, ValueError)):
        predict.main(["--refs", str(tmp_path / "none"), "--images", str(tmp_path / "none"), "--out", str(out),
                      "--mode", "fd", *TINY])
    assert not out.exists()


def test_resume_refusals_are_written_into_the_log_and_another_image_size_is_one(syn_datasets, mvtec_ckpt,
                                                                                  tiny_backbone_args, train_args,
                                                                                  tmp_path):
    """The shared one-epoch checkpoint (its run's arguments are ``argv``) resumed with another
    learning rate, then another image size: both refused, the reason last in train.log."""
    (tmp_path / "run").mkdir()
    shutil.copy(mvtec_ckpt, tmp_path / "run" / "epoch_1.pth")
    argv = ["--train_data_path", str(syn_datasets["mvtec"]), "--dataset", "mvtec", "--save_path",
            str(tmp_path / "run"), *train_args, *tiny_backbone_args, "--epoch", "2", "--resume"]
    with pytest.raises(ValueError, match="--resume: .*other settings"):
        train.main([*argv, "--learning_rate", "0.01"])
    last = (tmp_path / "run" / "train.log").read_text().strip().splitlines()[-1]
    assert "ERROR" in last and "error: --resume:" in last and "learning_rate: checkpoint 0.001, now 0.01" in last
    with pytest.raises(ValueError, match=r"--resume: .*image_size: checkpoint 112, now 84"):
        train.main([*argv, "--image_size", "84"])
    assert not (tmp_path / "run" / "epoch_2.pth").exists()
    assert not (tmp_path / "run" / "references.json").exists(), "written only once every check has passed"


def test_resume_at_another_encoder_dtype_is_refused_and_the_same_dtype_resumes(syn_datasets, mvtec_ckpt,
                                                                                tiny_backbone_args, train_args,
                                                                                tmp_path):
    """Issue 28.2: the shared checkpoint was trained under --precision auto, float32 here (the suite
    pins it); its run records that dtype. Another dtype is refused, naming the flag that gives the
    checkpoint's; --precision fp32 is the same dtype and resumes; a checkpoint from before the dtype
    was recorded resumes at the dtype asked for, and the log says so."""
    assert torch.load(mvtec_ckpt, weights_only=True)["run"]["encoder_dtype"] == "float32"
    (tmp_path / "run").mkdir()
    shutil.copy(mvtec_ckpt, tmp_path / "run" / "epoch_1.pth")
    argv = ["--train_data_path", str(syn_datasets["mvtec"]), "--dataset", "mvtec", "--save_path",
            str(tmp_path / "run"), *train_args, *tiny_backbone_args, "--epoch", "2", "--resume"]
    with pytest.raises(ValueError, match=r"^--resume: .*epoch_1\.pth belongs to a run with other settings "
                                         r"\(encoder_dtype: checkpoint 'float32', now 'bfloat16' \(--precision "
                                         r"fp32 runs the encoder in float32\)\); use another --save_path or the "
                                         r"same settings$"):
        train.main([*argv, "--precision", "bf16"])
    assert not (tmp_path / "run" / "epoch_2.pth").exists()
    assert train.main([*argv, "--precision", "fp32"]) == tmp_path / "run" / "epoch_2.pth"
    assert torch.load(tmp_path / "run" / "epoch_2.pth", weights_only=True)["run"]["encoder_dtype"] == "float32"

    older = torch.load(mvtec_ckpt, weights_only=True)
    del older["run"]["encoder_dtype"]
    (tmp_path / "old").mkdir()
    torch.save(older, tmp_path / "old" / "epoch_1.pth")
    argv[argv.index("--save_path") + 1] = str(tmp_path / "old")
    assert train.main(argv) == tmp_path / "old" / "epoch_2.pth"
    log = (tmp_path / "old" / "train.log").read_text()
    assert "records no encoder dtype: resumed at float32 (--precision auto)" in log


# ----------------------------------------------------------------------------- nothing lost

def _comparable(doc: dict) -> dict:
    """results.json without what names the folder it was written to."""
    extra = dict(doc["extra"])
    extra["args"] = {k: v for k, v in extra["args"].items() if k != "save_path"}
    extra.pop("references")
    return {"per_class": doc["per_class"], "mean": doc["mean"], "extra": extra}


def test_a_killed_evaluation_resumes_and_ends_as_an_uninterrupted_one(syn_datasets, tmp_path, monkeypatch):
    data = syn_datasets["visa"]
    classes = sorted(load_meta(data)["test"])
    argv = ["--data_path", str(data), "--dataset", "visa", *FD_TEST]
    test_few_shot.main([*argv, "--save_path", str(tmp_path / "straight")])

    # a run that is killed (SIGKILL) once its first class is written
    killed = tmp_path / "killed"
    code = ("import sys, time, test_few_shot as t\n"
            "finish = t.finish_class\n"
            "def stall(*a, **k):\n"
            "    out = finish(*a, **k)\n"
            "    print('CLASS DONE', flush=True)\n"
            "    time.sleep(120)\n"
            "    return out\n"
            "t.finish_class = stall\n"
            "t.main(sys.argv[1:])\n")
    proc = subprocess.Popen([sys.executable, "-c", code, *argv, "--save_path", str(killed)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert any(line.strip() == "CLASS DONE" for line in proc.stdout), "the run ended before its first class"
    finally:
        proc.kill()
        proc.wait()
    assert (killed / "classes" / f"{classes[0]}.json").is_file()
    assert not (killed / "classes" / f"{classes[1]}.json").exists() and not (killed / "results.json").exists()

    scored = []
    score_unit = test_few_shot.score_unit
    monkeypatch.setattr(test_few_shot, "score_unit", lambda *a, **k: scored.append(a[4].cls) or score_unit(*a, **k))
    test_few_shot.main([*argv, "--save_path", str(killed)])  # the same command again
    assert scored == classes[1:], "only the class the killed run had not finished is scored again"
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    resumed = json.loads((killed / "results.json").read_text())
    assert _comparable(resumed) == _comparable(straight)
    assert (killed / "results.csv").read_text() == (tmp_path / "straight" / "results.csv").read_text()

    # other settings, or --no-resume, compute every class again
    scored.clear()
    test_few_shot.main([*argv, "--save_path", str(killed), "--eval_size", "48"])
    assert scored == classes
    scored.clear()
    test_few_shot.main([*argv, "--save_path", str(killed), "--eval_size", "48", "--no-resume"])
    assert scored == classes


def test_a_resumed_class_writes_the_outputs_asked_for_that_its_earlier_run_did_not(syn_datasets, tmp_path,
                                                                                    monkeypatch):
    """Issue 28.1: a class is done only if the outputs asked for now (--save_maps, --save_vis) were
    written by its earlier run and are still there; outputs asked for earlier and not now do not
    make a class be scored again."""
    data = syn_datasets["visa"]
    meta = load_meta(data)
    classes = sorted(meta["test"])
    out = tmp_path / "run"
    argv = ["--data_path", str(data), "--dataset", "visa", *FD_TEST, "--save_path", str(out)]
    scored = []
    score_unit = test_few_shot.score_unit
    monkeypatch.setattr(test_few_shot, "score_unit", lambda *a, **k: scored.append(a[4].cls) or score_unit(*a, **k))
    first = test_few_shot.main(argv)
    assert scored == classes and not (out / "vis").exists() and not (out / "maps").exists()
    record = json.loads((out / "classes" / f"{classes[0]}.json").read_text())
    assert record["outputs"] == {"maps": False, "vis": False}

    def pictures(cls):
        return sorted(p.name for p in (out / "vis" / cls).glob("*.png"))

    expected = {c: sorted(Path(s["img_path"]).with_suffix("").as_posix().replace("/", "__") + ".png"
                          for s in meta["test"][c]) for c in classes}
    scored.clear()
    again = test_few_shot.main([*argv, "--save_vis"])
    assert scored == classes, "no class had its pictures: every class is scored again"
    assert {c: pictures(c) for c in classes} == expected
    assert again == first, "the same settings give the same metrics"
    assert json.loads((out / "classes" / f"{classes[0]}.json").read_text())["outputs"] == {"maps": False,
                                                                                          "vis": True}

    # pictures written and still there: done; one picture deleted: that class again; maps added: all again
    scored.clear()
    test_few_shot.main([*argv, "--save_vis"])
    assert scored == []
    (out / "vis" / classes[1] / expected[classes[1]][0]).unlink()
    test_few_shot.main([*argv, "--save_vis"])
    assert scored == [classes[1]] and pictures(classes[1]) == expected[classes[1]]
    scored.clear()
    test_few_shot.main([*argv, "--save_maps", "--save_vis"])
    assert scored == classes
    assert sorted(p.name for p in (out / "maps" / classes[0]).iterdir()) == sorted(
        ["image_scores.npy", "paths.txt", *(n.replace(".png", "_map.npy") for n in expected[classes[0]]),
         *(n.replace(".png", "_mask.npy") for n in expected[classes[0]])])
    # fewer outputs than the earlier run wrote: nothing is missing, nothing is scored
    scored.clear()
    assert test_few_shot.main(argv) == first and scored == []
    assert json.loads((out / "classes" / f"{classes[0]}.json").read_text())["outputs"] == {"maps": True,
                                                                                          "vis": True}


def test_a_class_that_fails_keeps_the_classes_before_it_and_logs_why(syn_datasets, tmp_path):
    data = tmp_path / "visa"
    shutil.copytree(syn_datasets["visa"], data)
    meta = load_meta(data)
    classes = sorted(meta["test"])
    (data / meta["test"][classes[1]][0]["img_path"]).write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.raises(ImageReadError):
        test_few_shot.main(["--data_path", str(data), "--save_path", str(out), *FD_TEST])
    assert (out / "classes" / f"{classes[0]}.json").is_file()
    assert "error: cannot read image" in (out / "test.log").read_text()


# ----------------------------------------------------------------------------- ready for CUDA

def test_moving_a_built_backbone_redecides_its_dtype_and_its_cached_embeddings(monkeypatch):
    bb = build_backbone("fasl-tiny-vit", pretrained=None, blocks=[1, 2, 3, 4], image_size=112, precision="auto")
    assert bb.feature_dtype == torch.float32
    before = bb.grid_embedding((4, 4))
    asked = []
    monkeypatch.setattr(backbone_mod, "encoder_dtype",
                        lambda precision, device: asked.append(torch.device(device).type) or torch.float16)
    bb.to("meta")  # as .to("cuda") would: the device changes after the build
    assert asked == ["meta"] and bb.feature_dtype == torch.float16
    after = bb.grid_embedding((4, 4))
    assert after.device.type == "meta" and after.shape == before.shape
    with pytest.raises(ValueError, match="weights must stay float32"):
        bb.half()


def test_a_half_precision_bank_scores_its_pick_in_float32():
    """FD = 1 - s from an fp16 bank: the search may run in fp16, the similarity of the chosen pair
    is its float32 dot product (brute force below), not fp16's steps of ~5e-4 near 1."""
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(3, 40, 32, generator=g), dim=-1)
    query = F.normalize(bank[:2] + 0.02 * torch.randn(2, 40, 32, generator=g), dim=-1)  # s close to 1
    memory = PatchMemory().fill([bank.half()], None)
    got = memory.align([query.half()], mode="exhaustive", gather=False)
    sim, idx = got.similarity[0], got.index[0]
    assert sim.dtype == torch.float32
    flat = bank.half().reshape(-1, 32).float()
    brute = torch.einsum("qnw,qnw->qn", query.half().float(), flat[idx])
    assert torch.allclose(sim, brute, rtol=0, atol=1e-6)
    best = (query.half().float().reshape(-1, 32) @ flat.t()).max(dim=1).values.reshape(2, 40)
    assert (sim >= best - 2e-3).all()  # the pick is the best up to fp16 near-ties
    assert len(torch.unique(1 - sim)) == sim.numel()  # no ties from fp16 rounding


def test_the_cuda_precision_policy_runs_end_to_end_on_the_cpu(syn_datasets, mvtec_ckpt, tmp_path):
    """fp16 encoder and banks, the search in the bank's dtype ('exact'), as CUDA runs them under
    --precision auto: training, a bank, every scoring mode, and the maps agree with fp32."""
    first = sorted(load_meta(syn_datasets["mvtec"])["test"])[0]
    path = train.main(["--train_data_path", str(syn_datasets["mvtec"]), "--save_path", str(tmp_path / "t"),
                       "--epoch", "1", "--k_shot", "1", "--batch_size", "6", "--classes", first, *TINY,
                       "--precision", "fp16"])
    assert torch.isfinite(torch.stack([v.float().sum() for v in read_checkpoint(path)["heads"].values()])).all()
    kw = dict(model="fasl-tiny-vit", pretrained=None, blocks=[1, 2, 3, 4], image_size=112, checkpoint=str(mvtec_ckpt))
    half, full = build_fasl(**kw, precision="fp16").eval(), build_fasl(**kw, precision="fp32").eval()
    full.backbone.load_state_dict(half.backbone.state_dict())  # the same random weights
    meta = load_meta(syn_datasets["visa"])
    cls = sorted(meta["test"])[0]
    from data.kshot import load_reference_images

    norm = (full.backbone.mean, full.backbone.std)
    refs = load_reference_images(syn_datasets["visa"], [meta["train"][cls][0]["img_path"]], 112, *norm)
    images = load_reference_images(syn_datasets["visa"], [s["img_path"] for s in meta["test"][cls][:3]], 112, *norm)
    for mode in ("fd", "merged"):  # merged: the heads' map and FD
        cfg = InferenceConfig(mode=mode, winmode="mul", win_size=4, win_stride=2, align="exhaustive",
                              search_precision="exact", out_size=32)
        banks = {m: m.build_memory(refs, m.windows_for(cfg)) for m in (half, full)}
        assert banks[half].global_memory.dtype == torch.float16 and banks[half].window_memory.dtype == torch.float16
        a, b = half.predict(images, banks[half], cfg), full.predict(images, banks[full], cfg)
        assert torch.isfinite(a.score_map).all() and torch.isfinite(a.image_score).all()
        assert (a.score_map - b.score_map).abs().max() < 0.02, mode
        assert (a.image_score - b.image_score).abs().max() < 0.02, mode


def test_the_loss_of_a_training_step_waits_for_no_host_sync(monkeypatch):
    """The 2L loss terms of a batch read nothing back from the device (the masks are checked once,
    on the CPU, before they are moved); a host sync counted here is one per term on a GPU."""
    syncs = []
    for name in ("item", "__bool__", "__int__", "__float__", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name: syncs.append(_n) or _o(self, *a))
    equal = torch.equal
    monkeypatch.setattr(torch, "equal", lambda *a: syncs.append("equal") or equal(*a))
    g = torch.Generator().manual_seed(0)
    grids = [torch.rand(2, 2, 4, 4, generator=g).softmax(1) for _ in range(8)]
    masks = (torch.rand(2, 1, 16, 16, generator=g) > 0.7).float()
    loss = train.segmentation_loss(ScoreMaps(grids[:4], grids[4:]), masks)
    assert syncs == [] and loss.ndim == 0
    monkeypatch.undo()
    with pytest.raises(ValueError, match="0/1 only"):
        train.check_masks(masks * 0.5)


def test_data_parallel_batch_norm_waits_for_no_host_sync(monkeypatch):
    """GlobalBatchNorm1d over two processes holding the same rows (the sums over processes faked
    as twice one's): no host sync, and the statistics of one BatchNorm over both copies."""
    import torch.distributed as dist

    from models import asl

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(asl._SumOverProcesses, "apply", lambda t: 2 * t)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    ours, plain = GlobalBatchNorm1d(3), torch.nn.BatchNorm1d(3)
    syncs = []
    for name in ("item", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name: syncs.append(_n) or _o(self, *a))
    out = ours(x)
    assert syncs == []
    monkeypatch.undo()
    ref = plain(torch.cat([x, x]))
    assert torch.allclose(out, ref[:5], atol=1e-6)
    assert torch.allclose(ours.running_var, plain.running_var, atol=1e-6)
    assert torch.allclose(ours.running_mean, plain.running_mean, atol=1e-6)


def test_process_group_gets_device_id_only_where_torch_has_it(monkeypatch):
    from utils import distributed

    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend=None, timeout=None: None)
    assert not distributed._takes_device_id()
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend=None, timeout=None, device_id=None: None)
    assert distributed._takes_device_id()


def test_references_files_record_their_dtypes_and_refuse_others(syn_datasets, tmp_path):
    meta = load_meta(syn_datasets["visa"])
    cls = sorted(meta["test"])[0]
    from data.kshot import load_reference_images

    from data.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # the tiny ViT's (open_clip's) normalisation

    refs = load_reference_images(syn_datasets["visa"], [meta["train"][cls][0]["img_path"]], 112, OPENAI_CLIP_MEAN,
                                 OPENAI_CLIP_STD)
    kw = dict(model="fasl-tiny-vit", pretrained=None, blocks=[1, 2, 3, 4], image_size=112)
    cfg = InferenceConfig(mode="fd", search_precision="exact")
    fp32 = build_fasl(**kw, precision="fp32")
    saved = SavedReferences(fp32.build_memory(refs), Thresholds.by_hand(0.5, 0.5), ["a.png"])
    saved.save(tmp_path / "r.pt", fp32, cfg)
    assert torch.load(tmp_path / "r.pt", weights_only=True)["precision"] == {
        "encoder": "float32", "bank": "float32", "search": "float32", "window_search": None}
    fp16 = build_fasl(**kw, precision="fp16")
    with pytest.raises(ValueError, match=r"encoded under other dtypes \(encoder: file float32, now float16; bank: "
                                         r"file float32, now float16"):
        SavedReferences.load(tmp_path / "r.pt", fp16, cfg)
    with pytest.warns(UserWarning, match="differs from this run in precision"):
        SavedReferences.load(tmp_path / "r.pt", fp16, cfg, check_scoring=False)  # thresholds given by hand
    assert SavedReferences.load(tmp_path / "r.pt", fp32, cfg).bank.k == 1


# ----------------------------------------------------------------------------- clear words

def _vit_weights_message(tmp_path, monkeypatch, offline: str | None) -> str:
    """predict.py asked for ViT-L-14-336's 'openai' weights with nothing cached and no network
    (HF_HUB_OFFLINE set to ``offline``, or unset: the caller's shell may set it either way) ->
    its message, after checking it came at once and wrote nothing."""
    import huggingface_hub

    import predict

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # nothing cached
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there (never asked when offline)
    if offline is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(image)
    t0 = time.time()
    message = _exit(lambda: predict.main(["--refs", str(image), "--images", str(image), "--out",
                                          str(tmp_path / "out"), "--mode", "fd", "--model", "ViT-L-14-336"]))
    assert time.time() - t0 < 30
    assert "\n" not in message
    assert "pass --pretrained FILE" in message and "--model timm:NAME --pretrained FILE" in message
    assert not (tmp_path / "out").exists()
    return message


def test_the_default_weights_offline_fail_at_once_in_one_line(tmp_path, monkeypatch, capsys):
    message = _vit_weights_message(tmp_path, monkeypatch, None)
    assert "cannot download the 'openai' weights of ViT-L-14-336" in message
    assert capsys.readouterr().err.count("\n") <= 1


@pytest.mark.parametrize("value", ["1", "true", "ON"])
def test_the_default_weights_under_hf_hub_offline_fail_at_once_in_one_line(tmp_path, monkeypatch, capsys, value):
    message = _vit_weights_message(tmp_path, monkeypatch, value)
    assert "the 'openai' weights of ViT-L-14-336 are not in the local cache and HF_HUB_OFFLINE is set" in message
    assert capsys.readouterr().err.count("\n") <= 1


def test_a_weights_file_of_garbage_is_not_a_state_dict(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="is not a state dict of fasl-tiny-vit: its bytes are not a torch") as exc:
        build_backbone("fasl-tiny-vit", pretrained=str(garbage), image_size=112)
    with pytest.raises(CheckpointMismatch, match="cannot be read as a FASL checkpoint: its bytes are not") as exc2:
        read_checkpoint(garbage)
    for err in (exc.value, exc2.value):
        assert "weights_only=False" not in str(err) and "\n" not in str(err)


def test_summarize_help_is_help_and_a_missing_folder_an_error():
    help_ = subprocess.run([sys.executable, "bench/summarize.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert help_.returncode == 0 and help_.stdout.startswith("usage: summarize.py") and "|" not in help_.stdout
    missing = subprocess.run([sys.executable, "bench/summarize.py", "no_such_folder"], cwd=REPO, capture_output=True,
                             text=True)
    assert missing.returncode == 2 and "no_such_folder is not a folder" in missing.stderr


def _stub_env(tmp_path, stamp: bool):
    """A PATH holding a stub python3 (no python) and the few tools the scripts use, and a stub
    environment (FASL_VENV) whose python records its calls; ``stamp``: the environment says it
    holds today's requirements."""
    import hashlib

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    calls = tmp_path / "calls"
    for name, target in (("python3", bin_ / "python3"), ("python", tmp_path / "venv" / "bin" / "python")):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"#!{shutil.which('bash')}\necho {name} \"$@\" >> {calls}\n")
        target.chmod(0o755)
    for tool in ("dirname", "cat", "sha256sum", "cut", "date", "ls", "head"):
        (bin_ / tool).symlink_to(shutil.which(tool))
    if stamp:
        digest = hashlib.sha256((REPO / "requirements.txt").read_bytes()).hexdigest()
        (tmp_path / "venv" / ".fasl-requirements").write_text(digest + "\n")
    return {"PATH": str(bin_), "FASL_VENV": str(tmp_path / "venv"), "DEMO_OUT": str(tmp_path / "demo")}, calls


def test_demo_runs_with_python3_alone_in_its_environment(tmp_path):
    """demo.sh on a system that has python3 and no python, its environment already set up: every
    step runs with the environment's python, and nothing is installed."""
    env, calls = _stub_env(tmp_path, stamp=True)
    (tmp_path / "demo" / "checkpoints").mkdir(parents=True)
    (tmp_path / "demo" / "checkpoints" / "epoch_1.pth").write_text("")
    res = subprocess.run([shutil.which("bash"), str(REPO / "demo.sh")], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    text = calls.read_text()
    for step in ("data/textures.py", "train.py", "test_few_shot.py", "predict.py"):
        assert f"python {step}" in text, step
    assert "pip install" not in text and "python3 -m venv" not in text


def test_setup_installs_when_the_requirements_changed(tmp_path):
    """A stale stamp (requirements.txt changed since the install): the environment is brought up to
    date with pip, from python3 alone."""
    env, calls = _stub_env(tmp_path, stamp=False)
    res = subprocess.run([shutil.which("bash"), "-c", f"source {REPO / 'scripts' / 'setup_env.sh'} && echo $PYTHON"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "venv" / "bin" / "python")
    text = calls.read_text()
    assert "-m pip install" in text and f"-r {REPO / 'requirements.txt'}" in text
    assert (tmp_path / "venv" / ".fasl-requirements").read_text().strip()  # the stamp is written


def test_requirements_declare_every_package_the_code_imports():
    names = {"PIL": "pillow", "cv2": "opencv-python-headless", "sklearn": "scikit-learn", "skimage": "scikit-image",
             "open_clip": "open_clip_torch", "huggingface_hub": "huggingface_hub"}
    declared = {line.split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for line in (REPO / "requirements.txt").read_text().splitlines() if line.strip() and line[0] != "#"}
    local = {p.stem for p in REPO.glob("*.py")} | {p.name for p in REPO.iterdir() if p.is_dir()} | \
        {p.stem for p in (REPO / "bench").glob("*.py")}
    stdlib = getattr(sys, "stdlib_module_names", set())
    imported = set()
    for path in REPO.rglob("*.py"):
        if any(part.startswith(".") for part in path.relative_to(REPO).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in local and m not in stdlib and m != "__future__"}
    if not stdlib:
        pytest.skip("sys.stdlib_module_names needs Python 3.10")
    missing = sorted(m for m in third_party if names.get(m, m).lower() not in declared)
    assert missing == []


def test_gpu_check_is_valid_bash_and_its_table_reads_every_step(tmp_path):
    """bench/gpu_check.sh cannot run without a GPU; its script parses and its summary reads what
    each step writes, and names a step that wrote nothing."""
    assert subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_check.sh")]).returncode == 0
    sys.path.insert(0, str(REPO / "bench"))
    import gpu_check

    mode = {"map_max_abs_diff": 3e-3, "score_max_abs_diff": 1e-3, "fd_distinct_share": 0.99,
            "fd_distinct_share_cpu_fp32": 1.0}
    (tmp_path / "agreement.json").write_text(json.dumps(
        {"device": "cuda", "runs": {"auto moved": {"encoder_dtype": "float16", "modes": {"fd": mode, "fasl": mode}}}}))
    (tmp_path / "nccl.json").write_text(json.dumps({"all_reduce_ok": True, "broadcast_ok": True, "seconds": 2.0}))
    (tmp_path / "vitl_mul.json").write_text(json.dumps({"settings": {"align": "exhaustive"}, "encoder_dtype": "float16",
                                                       "total_s": 0.05, "floor_s": 0.04,
                                                       "cuda_max_allocated_bytes": 3 * 2**30}))
    text = gpu_check.table(str(tmp_path))
    assert "max |map diff| 3.00e-03" in text and "encoder float16" in text
    assert "all_reduce ok, broadcast ok" in text
    assert "50.0 ms/img (backbone alone 40.0), peak GPU memory 3.00 GiB" in text
    assert text.count("not run / failed") == 2  # the torchrun test and the nan timing
