"""Several processes with torch.distributed (gloo on CPU): the work plan, and torchrun runs of
test_few_shot.py, predict.py and train.py that must give what one process gives."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.distributed import Dist, Unit, plan_units, shard

REPO = Path(__file__).resolve().parent.parent
TINY = ["--model", "fasl-tiny-vit", "--pretrained", "none", "--image_size", "112", "--features_list", "1", "2", "3",
        "4", "--device", "cpu"]


# ----------------------------------------------------------------------------- the plan (pure)

def covered(plan, sizes):
    """Every image of every class exactly once."""
    seen = {c: [] for c in sizes}
    for units in plan:
        for u in units:
            seen[u.cls] += list(range(u.start, u.stop))
    return all(sorted(seen[c]) == list(range(n)) for c, n in sizes.items())


def test_one_process_gets_every_class_whole():
    sizes = {"b": 7, "a": 40, "c": 3}
    assert plan_units(sizes, 1, 8) == [[Unit("b", 0, 7), Unit("a", 0, 40), Unit("c", 0, 3)]]


def test_classes_first_and_the_images_of_a_large_class():
    sizes = {"a": 10, "b": 3, "c": 40, "d": 9}  # 62 images, a share of 31
    plan = plan_units(sizes, 2, 4)
    assert covered(plan, sizes)
    # only the class larger than a share is cut, at batch multiples; the others stay whole
    cut = [u for units in plan for u in units if u.cls == "c"]
    assert len(cut) == 2 and all(u.start % 4 == 0 for u in cut)
    assert sorted((u.cls, u.size) for units in plan for u in units if u.cls != "c") == [("a", 10), ("b", 3), ("d", 9)]
    loads = [sum(u.size for u in units) for units in plan]
    assert max(loads) - min(loads) <= 4
    # each rank's units come in class order, so results can be joined in meta.json order
    order = list(sizes)
    assert all([order.index(u.cls) for u in units] == sorted(order.index(u.cls) for u in units) for units in plan)
    many = plan_units({f"c{i}": 5 + i for i in range(15)}, 4, 8)  # MVTec-like: many classes, no cut
    assert covered(many, {f"c{i}": 5 + i for i in range(15)}) and all(u.start == 0 for p in many for u in p)
    with pytest.raises(ValueError, match="world size and batch size"):
        plan_units(sizes, 0, 4)


def test_shard_gives_contiguous_blocks_of_whole_batches():
    items = list(range(21))
    parts = [shard(items, Dist(r, 3), 4) for r in range(3)]
    assert [list(p) for p in parts] == [list(range(0, 8)), list(range(8, 16)), list(range(16, 21))]
    assert shard(items, Dist(), 4) == range(21)
    assert list(shard(items[:3], Dist(2, 3), 4)) == []  # fewer batches than processes


# ----------------------------------------------------------------------------- torchrun

def torchrun(n: int, script: str, args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           str(REPO / script), *args]
    if n == 1:  # plain python: the program as a user runs it without torchrun
        cmd = [sys.executable, str(REPO / script), *args]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("classes", [[], ["--classes", "pcb", "--batch_size", "2"]], ids=["classes", "images"])
def test_test_few_shot_under_torchrun_gives_the_single_process_results(syn_datasets, tmp_path, classes):
    """Two processes (whole classes shared out, or the images of one class cut in two) give the
    numbers of one process, for every run of a sweep; results.json says how many processes ran."""
    common = ["--data_path", str(syn_datasets["visa"]), "--mode", "fd", "--eval_size", "32", "--winmode", "mul",
              "--win_size", "4", "--win_stride", "2", "--k_shot", "1", "2", "--seeds", "3", "4", "--save_maps", *TINY,
              *classes]
    torchrun(1, "test_few_shot.py", [*common, "--save_path", str(tmp_path / "one")])
    res = torchrun(2, "test_few_shot.py", [*common, "--save_path", str(tmp_path / "two")])
    for run in ("1shot/seed3", "1shot/seed4", "2shot/seed3", "2shot/seed4"):
        one, two = read(tmp_path / "one" / run / "results.json"), read(tmp_path / "two" / run / "results.json")
        assert one["per_class"] == two["per_class"] and one["mean"] == two["mean"]
        assert one["extra"]["world_size"] == 1 and two["extra"]["world_size"] == 2
        assert read(tmp_path / "one" / run / "references.json") == read(tmp_path / "two" / run / "references.json")
        for cls in one["per_class"]:
            for name in (tmp_path / "one" / run / "maps" / cls).glob("*.npy"):
                assert np.array_equal(np.load(name), np.load(tmp_path / "two" / run / "maps" / cls / name.name)), name
    assert read(tmp_path / "one" / "sweep.json") == read(tmp_path / "two" / "sweep.json")
    logs = (tmp_path / "two" / "test.log").read_text() + (tmp_path / "two" / "test.rank1.log").read_text()
    assert "[rank 0/2]" in logs and "[rank 1/2]" in logs  # each process says what it scored


def test_predict_under_torchrun_writes_one_merged_file(syn_datasets, tmp_path):
    meta = read(syn_datasets["visa"] / "meta.json")
    cls = sorted(meta["test"])[0]
    refs = [str(syn_datasets["visa"] / s["img_path"]) for s in meta["train"][cls][:2]]
    images = [str(syn_datasets["visa"] / s["img_path"]) for s in meta["test"][cls]]
    common = ["--refs", *refs, "--images", *images, "--mode", "fd", "--batch_size", "2", *TINY]
    torchrun(1, "predict.py", [*common, "--out", str(tmp_path / "one")])
    torchrun(2, "predict.py", [*common, "--out", str(tmp_path / "two")])
    one, two = read(tmp_path / "one" / "predictions.json"), read(tmp_path / "two" / "predictions.json")
    assert [r["path"] for r in two["images"]] == images  # every image once, in input order
    assert one["images"] == two["images"] and one["verdicts"] == two["verdicts"]
    assert (tmp_path / "one" / "predictions.csv").read_text() == (tmp_path / "two" / "predictions.csv").read_text()
    assert all((tmp_path / "two" / r["overlay"]).is_file() for r in two["images"])


def test_predict_under_torchrun_falls_back_and_matches_known_defects_as_one_process(syn_datasets, tmp_path):
    """A lot-aware lot that looks mostly defective (a references-only threshold at a 90 % false-alarm
    rate, lowered by 90 %) is scored again from the references alone, with a known defect: both processes
    agree on the images, the references-only scores and the known-defect matches."""
    meta = read(syn_datasets["visa"] / "meta.json")
    cls = sorted(meta["test"])[0]
    refs = [str(syn_datasets["visa"] / s["img_path"]) for s in meta["train"][cls][:2]]
    images = [str(syn_datasets["visa"] / s["img_path"]) for s in meta["test"][cls]]
    common = ["--refs", *refs, "--images", *images, "--mode", "fd", "--batch_size", "2", "--min_lot", "3",
              "--fpr", "0.9", "--margin", "-0.9", "--defect_refs", images[-1], *TINY]
    torchrun(1, "predict.py", [*common, "--out", str(tmp_path / "one")])
    torchrun(2, "predict.py", [*common, "--out", str(tmp_path / "two")])
    one, two = read(tmp_path / "one" / "predictions.json"), read(tmp_path / "two" / "predictions.json")
    assert one["fell_back"] and two["fell_back"] and not two["lot_aware"]
    assert [r["path"] for r in two["images"]] == images
    assert one["images"] == two["images"] and one["verdicts"] == two["verdicts"]
    assert all(r["known_match"] is not None for r in two["images"])


def epoch_losses(log: Path) -> list[float]:
    return [float(line.split(" loss ")[1].split()[0]) for line in log.read_text().splitlines() if " loss " in line]


def test_train_under_torchrun_follows_the_single_process_run(syn_datasets, tmp_path):
    """Data parallel over two processes (one BatchNorm batch across them, gradients averaged):
    the loss curve of one process with the same global batches, and heads that score alike; an
    interrupted run resumes."""
    from models import build_fasl

    common = ["--train_data_path", str(syn_datasets["mvtec"]), "--epoch", "2", "--batch_size", "5", "--k_shot", "1",
              *TINY]
    torchrun(1, "train.py", [*common, "--save_path", str(tmp_path / "one")])
    torchrun(2, "train.py", [*common, "--save_path", str(tmp_path / "two"), "--epoch", "1"])
    torchrun(2, "train.py", [*common, "--save_path", str(tmp_path / "two"), "--resume"])
    one, two = epoch_losses(tmp_path / "one" / "train.log"), epoch_losses(tmp_path / "two" / "train.log")
    assert len(one) == len(two) == 2
    np.testing.assert_allclose(two, one, rtol=1e-4)
    assert "resumed from" in (tmp_path / "two" / "train.log").read_text()
    # the heads compute the same function (Adam's first steps move gradient-free parameters, such
    # as a bias a BatchNorm cancels, by noise: compare what the heads do, not every number)
    queries = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(5))
    preds = []
    for run in ("one", "two"):
        torch.manual_seed(0)
        model = build_fasl("fasl-tiny-vit", None, [1, 2, 3, 4], 112, checkpoint=str(tmp_path / run / "epoch_2.pth"))
        torch.manual_seed(0)
        bank = model.build_memory(torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(6)))
        preds.append(model.predict(queries, bank).score_map)
    torch.testing.assert_close(preds[1], preds[0], rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- one DDP step, in-process spawn

def _ddp_step(rank: int, world: int, init: str, batch, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from train import local_part, segmentation_loss
    from utils.distributed import Dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model, banks, images, masks, names = batch()
        d = Dist(rank, world)
        mine = local_part(list(range(len(images))), d)
        from models.asl import global_batch_norm

        global_batch_norm(model.heads)
        heads = DistributedDataParallel(model.heads)
        maps = model(images[mine], [banks[names[i]] for i in mine], heads=heads)
        loss = segmentation_loss(maps, masks[mine]) * (len(mine) * world / len(images))
        loss.backward()
        if rank == 0:
            torch.save({"grads": {n: p.grad for n, p in model.heads.named_parameters()},
                        "state": model.heads.state_dict()}, out)
    finally:
        dist.destroy_process_group()


def _tiny_batch():
    """A seeded model, two class banks and a mixed batch of 5 images with masks."""
    from models import build_fasl

    torch.manual_seed(0)
    model = build_fasl("fasl-tiny-vit", None, [1, 2, 3, 4], 56)
    model.heads.train()
    g = torch.Generator().manual_seed(1)
    refs = torch.randn(2, 3, 56, 56, generator=g)
    banks = {"a": model.build_memory(refs[:1]), "b": model.build_memory(refs[1:])}
    images = torch.randn(5, 3, 56, 56, generator=g)
    masks = (torch.rand(5, 1, 56, 56, generator=g) > 0.8).float()
    return model, banks, images, masks, ["a", "b", "b", "a", "b"]


def test_one_ddp_step_equals_one_single_process_step(tmp_path):
    """A mixed-class batch of 5 split 3 / 2 over two processes: the averaged gradients are the
    whole batch's (every BatchNorm normalising over both processes' rows), and so are the
    BatchNorms' running statistics after the step."""
    import torch.multiprocessing as mp

    from train import segmentation_loss

    model, banks, images, masks, names = _tiny_batch()
    segmentation_loss(model(images, [banks[c] for c in names]), masks).backward()
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_step, args=(2, f"file://{tmp_path / 'rendezvous'}", _tiny_batch, str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    for name, p in model.heads.named_parameters():
        scale = p.grad.abs().max().clamp_min(1e-3)
        torch.testing.assert_close(ddp["grads"][name] / scale, p.grad / scale, rtol=0, atol=1e-4, msg=name)
    for key, value in model.heads.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(ddp["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(ddp["state"][key], value), key
