"""Checkpoint and resume-state files: round trips, and every bad file refused with one clean error.

No training here: the files are made from freshly built models, then damaged."""
import json
import math
import os
import pickle
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models.architectures import build_model
from pipeline.artifacts import (CHECKPOINT, LEGACY_CHECKPOINT, LEGACY_TRAIN_STATE, TRAIN_STATE, ArtifactError)
from pipeline.checkpoints import (CHECKPOINT_FORMAT, METADATA_KEY, CheckpointError, checkpoint_from_model,
                                  load_checkpoint, load_train_state, model_from_checkpoint, read_train_state,
                                  save_checkpoint, save_train_state, training_identity)

SHAPE = (1, 8, 8)
CONFIG = {"data": {"name": "digits"}, "model": {"arch": "cnn-small"}, "nq": {"levels": 4},
          "train": {"epochs": 3, "lr": 0.05}, "snn": {"timesteps": 4}, "run": {"dir": "x"}}


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("cnn-small", SHAPE, 10, 4, noise=True, init_threshold=2.0)


def _ckpt(model):
    record = {"epoch": 2, "loss": 0.5, "ann_val": 0.9, "snn_val": 0.8, "output_threshold": 3.5}
    return checkpoint_from_model(model, config=CONFIG, arch="cnn-small", input_shape=SHAPE, num_classes=10,
                                 levels=4, record=record, history=[{"epoch": 1}, dict(record)])


def _trainer(seed=0):
    model = _model(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)
    return model, optimizer, scheduler


def _step(model, optimizer, scheduler):
    """One SGD step on random data: momentum buffers exist afterwards."""
    loss = model(torch.rand(4, *SHAPE)).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def _state_file(path: Path, epoch: int = 0, **doc_changes) -> Path:
    model, optimizer, scheduler = _trainer()
    for _ in range(epoch + 1):
        _step(model, optimizer, scheduler)
    history = [{"epoch": e + 1, "snn_val": 0.5} for e in range(epoch + 1)]
    save_train_state(path, model, optimizer, scheduler, epoch=epoch, history=history,
                     best=dict(history[-1]), config=CONFIG)
    if doc_changes:
        _rewrite(path, lambda doc: doc.update(doc_changes))
    return path


def _read_raw(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()[METADATA_KEY]), {k: f.get_tensor(k) for k in f.keys()}


def _rewrite(path, doc_fn=None, tensors_fn=None):
    """Damage a valid file: change its JSON document and/or tensors, bypassing every check."""
    doc, tensors = _read_raw(path)
    if doc_fn:
        replacement = doc_fn(doc)
        if getattr(doc_fn, "replaces", False):
            doc = replacement
    if tensors_fn:
        tensors_fn(tensors)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(doc)})


def _raw_safetensors(path, header) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def _patch_header(change):
    """Damage the safetensors header itself (its first tensor's entry), keeping the data bytes."""
    def damage(path, marker):
        data = path.read_bytes()
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
        change(header[next(k for k in header if k != "__metadata__")])
        raw = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])
    return damage


def _as_list(doc):
    return [doc]


_as_list.replaces = True


# --------------------------------------------------------------------------- round trips
def test_a_cuba_matched_checkpoint_rebuilds_its_activation(tmp_path):
    activation = {"activation": "cuba-matched", "timesteps": 4, "cuba_shift": "half-bias"}
    # a small λ, so that the two activations give different outputs on these inputs
    model = build_model("cnn-small", SHAPE, 10, 4, False, 0.3, **activation)
    ckpt = checkpoint_from_model(model, config={}, arch="cnn-small", input_shape=SHAPE, num_classes=10,
                                 levels=4, record={"epoch": 1}, history=[], activation=activation)
    save_checkpoint(tmp_path / CHECKPOINT, ckpt)
    loaded = load_checkpoint(tmp_path / CHECKPOINT)
    assert loaded["activation"] == activation
    rebuilt = model_from_checkpoint(loaded)
    x = 3 * torch.rand(5, *SHAPE)
    assert torch.equal(rebuilt(x), model.eval()(x))
    qcfs_twin = build_model("cnn-small", SHAPE, 10, 4, False, 0.3)
    qcfs_twin.load_state_dict(model.state_dict())
    assert not torch.equal(qcfs_twin.eval()(x), rebuilt(x))  # the activation really is restored


def test_checkpoint_round_trip_keeps_tensors_and_metadata(tmp_path):
    model = _model()
    ckpt = _ckpt(model)
    save_checkpoint(tmp_path / CHECKPOINT, ckpt)
    loaded = load_checkpoint(tmp_path / CHECKPOINT)
    assert set(loaded) == set(ckpt)
    assert loaded["format_version"] == CHECKPOINT_FORMAT == 3
    for key in ckpt:
        if key != "state_dict":
            assert loaded[key] == ckpt[key], key
    assert set(loaded["state_dict"]) == set(ckpt["state_dict"])
    for name, tensor in ckpt["state_dict"].items():
        assert torch.equal(loaded["state_dict"][name], tensor) and loaded["state_dict"][name].dtype == tensor.dtype
    rebuilt = model_from_checkpoint(loaded)
    x = torch.rand(5, *SHAPE)
    assert torch.equal(rebuilt(x), model.eval()(x))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_train_state_round_trip_continues_bit_identically(tmp_path):
    model, optimizer, scheduler = _trainer()
    _step(model, optimizer, scheduler)
    save_train_state(tmp_path / TRAIN_STATE, model, optimizer, scheduler, epoch=0,
                     history=[{"epoch": 1, "snn_val": 0.5}], best={"epoch": 1, "snn_val": 0.5}, config=CONFIG)
    torch.manual_seed(123)  # the restored RNG must replace this
    resumed = _trainer(seed=7)
    point = load_train_state(tmp_path / TRAIN_STATE, *resumed, config=CONFIG, epochs=3)
    assert point.start_epoch == 1 and point.history == [{"epoch": 1, "snn_val": 0.5}]
    assert point.best == {"epoch": 1, "snn_val": 0.5}
    torch.set_rng_state(_read_raw(tmp_path / TRAIN_STATE)[1]["torch_rng"])
    _step(model, optimizer, scheduler)
    torch.set_rng_state(_read_raw(tmp_path / TRAIN_STATE)[1]["torch_rng"])
    _step(*resumed)
    for (name, a), b in zip(model.state_dict().items(), resumed[0].state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed[2].state_dict() == scheduler.state_dict()
    assert optimizer.state_dict()["param_groups"] == resumed[1].state_dict()["param_groups"]


def test_train_state_restores_the_rng(tmp_path):
    path = _state_file(tmp_path / TRAIN_STATE)
    saved = _read_raw(path)[1]["torch_rng"]
    torch.manual_seed(99)
    load_train_state(path, *_trainer(), config=CONFIG, epochs=3)
    assert torch.equal(torch.get_rng_state(), saved)


def test_a_different_configuration_is_not_resumed(tmp_path):
    """Another configuration's resume state is an error, never silently dropped (train refuses
    to replace it before, unless told to: tests/test_robustness.py)."""
    path = _state_file(tmp_path / TRAIN_STATE)
    other = {**CONFIG, "train": {"epochs": 3, "lr": 0.1}}
    assert training_identity(other) != training_identity(CONFIG)
    with pytest.raises(CheckpointError, match="another configuration"):
        load_train_state(path, *_trainer(), config=other, epochs=3)
    assert load_train_state(tmp_path / "absent" / TRAIN_STATE, *_trainer(), config=CONFIG, epochs=3) is None


def test_complete_resume_state_resumes_at_the_end(tmp_path):
    point = load_train_state(_state_file(tmp_path / TRAIN_STATE, epoch=2), *_trainer(), config=CONFIG, epochs=3)
    assert point.start_epoch == 3 and len(point.history) == 3


# --------------------------------------------------------------------------- bad files
class _Payload:
    """Creates the marker directory if it is ever unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class _Scripted(torch.nn.Module):
    def forward(self, x):
        return x + 1


def _torchscript(path, marker):
    torch.jit.save(torch.jit.script(_Scripted()), str(path))


def _pickle(path, marker):
    path.write_bytes(pickle.dumps({"format_version": 3, "evil": _Payload(marker)}))


def _pickle_protocol0(path, marker):
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=0))


def _torch_save_payload(path, marker):
    torch.save({"format_version": 2, "evil": _Payload(marker)}, path)


def _truncated(path, marker):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _truncated_header(path, marker):
    path.write_bytes(path.read_bytes()[:40])


def _nan_tensor(name):
    def damage(tensors):
        key = next(k for k in tensors if k.endswith(name))
        tensors[key] = torch.full_like(tensors[key], math.nan)
    return damage


def _first_weight_wrong_shape(tensors):
    key = next(k for k in tensors if k.endswith("0.weight"))
    tensors[key] = torch.zeros(3, 1, 3, 3)


def _drop_first(tensors):
    tensors.pop(next(k for k in tensors if k.endswith("0.weight")))


def _wrong_dtype(tensors):
    key = next(k for k in tensors if k.endswith("0.weight"))
    tensors[key] = tensors[key].double()


BYTES = {
    "empty": lambda p, m: p.write_bytes(b""),
    "seven bytes": lambda p, m: p.write_bytes(b"\x01" * 7),
    "random bytes": lambda p, m: p.write_bytes(os.urandom(4096)),
    "text": lambda p, m: p.write_bytes(b"not a checkpoint at all"),
    "huge header length": lambda p, m: p.write_bytes(struct.pack("<Q", 1 << 62) + b"{}"),
    "header is a list": lambda p, m: _raw_safetensors(p, [1, 2, 3]),
    "header not json": lambda p, m: p.write_bytes(struct.pack("<Q", 5) + b"{{{{{"),
    "deeply nested header": lambda p, m: p.write_bytes(struct.pack("<Q", 200000) + b"[" * 200000),
    "no metadata": lambda p, m: _raw_safetensors(p, {}),
    "metadata not a dict": lambda p, m: _raw_safetensors(p, {"__metadata__": [1]}),
    "tensor entry not an object": _patch_header(lambda e: (e.clear(), e.update(x=1))),
    "tensor shape not a list": _patch_header(lambda e: e.update(shape="x")),
    "tensor shape negative": _patch_header(lambda e: e.update(shape=[-1, 4])),
    "tensor of 1e12 elements": _patch_header(lambda e: e.update(shape=[10 ** 6, 10 ** 6])),
    "unknown dtype": _patch_header(lambda e: e.update(dtype="F128")),
    "offsets beyond the file": _patch_header(lambda e: e.update(data_offsets=[0, 1 << 40])),
    "offsets reversed": _patch_header(lambda e: e.update(data_offsets=e["data_offsets"][::-1])),
    "size disagrees with shape": _patch_header(lambda e: e["shape"].append(2)),
    "overlapping offsets": _patch_header(lambda e: e.update(data_offsets=[o + 8 for o in e["data_offsets"]])),
    "torchscript archive": _torchscript,
    "pickle payload": _pickle,
    "pickle protocol 0": _pickle_protocol0,
    "torch.save with payload": _torch_save_payload,
    "truncated": _truncated,
    "truncated header": _truncated_header,
    "a directory": lambda p, m: (p.unlink(), p.mkdir()),
    "a link to /dev/zero": lambda p, m: (p.unlink(), p.symlink_to("/dev/zero")),
    "a FIFO": lambda p, m: (p.unlink(), os.mkfifo(p)),
    "a loop of links": lambda p, m: (p.unlink(), p.symlink_to(p)),
}

DOC = {
    "metadata is a JSON list": _as_list,
    "wrong kind": lambda d: d.update(kind="report"),
    "format_version 1": lambda d: d.update(format_version=1),
    "format_version 99": lambda d: d.update(format_version=99),
    "format_version as string": lambda d: d.update(format_version="3"),
    "missing field": lambda d: d.pop("config"),
    "extra field": lambda d: d.update(surprise=1),
    "epoch negative": lambda d: d.update(epoch=-1),
    "epoch 1e9": lambda d: d.update(epoch=10 ** 9),
    "epoch float": lambda d: d.update(epoch=1.5),
    "config a list": lambda d: d.update(config=[1]),
    "history a dict": lambda d: d.update(history={}),
}

#: a user network's source that names code to run (a checkpoint never runs what it names)
FORGED_SOURCE = {"factory": "os:system", "kwargs": {"command": "touch forged-source-ran"}, "onnx": None,
                 "onnx_sha256": None, "object": None, "weights": None, "weights_sha256": None}

CHECKPOINT_DOC = {
    "source naming code, without arch": lambda d: d.update(arch=None, source=FORGED_SOURCE),
    "source beside arch": lambda d: d.update(source=FORGED_SOURCE),
    "source of two origins": lambda d: d.update(arch=None, source={**FORGED_SOURCE, "object": "x.Net"}),
    "source kwargs a list": lambda d: d.update(arch=None, source={**FORGED_SOURCE, "kwargs": [1]}),
    "source sha256 not hex": lambda d: d.update(arch=None, source={**FORGED_SOURCE, "weights_sha256": "x" * 64}),
    "source with an unknown field": lambda d: d.update(arch=None, source={**FORGED_SOURCE, "code": "x"}),
    "input_shape flat for arch": lambda d: d.update(input_shape=[64]),
    "unknown arch": lambda d: d.update(arch="resnet9000"),
    "arch none": lambda d: d.update(arch=None),
    "other arch (shapes differ)": lambda d: d.update(arch="vgg-small", sigma=[0.0] * 6,
                                                     **{"lambda": [1.0] * 6}),
    "levels 0": lambda d: d.update(levels=0),
    "levels bool": lambda d: d.update(levels=True),
    "levels 1e6": lambda d: d.update(levels=10 ** 6),
    "num_classes 1": lambda d: d.update(num_classes=1),
    "num_classes 11 (shapes differ)": lambda d: d.update(num_classes=11),
    "input_shape absurd": lambda d: d.update(input_shape=[1, 10 ** 9, 10 ** 9]),
    "input_shape float": lambda d: d.update(input_shape=[1, 8.5, 8]),
    "input_shape 2-d": lambda d: d.update(input_shape=[8, 8]),
    "input_shape too small for arch": lambda d: d.update(input_shape=[1, 2, 2]),
    "input_shape 16x16 (shapes differ)": lambda d: d.update(input_shape=[1, 16, 16]),
    "output_threshold 0": lambda d: d.update(output_threshold=0),
    "output_threshold NaN": lambda d: d.update(output_threshold=math.nan),
    "output_threshold string": lambda d: d.update(output_threshold="1"),
    "sigma too short": lambda d: d.update(sigma=[0.1]),
    "sigma infinite": lambda d: d.update(sigma=[0.0, math.inf, 0.1]),
    "lambda not a list": lambda d: d.update(**{"lambda": 2.0}),
    "lambda 0": lambda d: d.update(**{"lambda": [0.0, 1.0, 1.0]}),
    "lambda negative": lambda d: d.update(**{"lambda": [1.0, -1.0, 1.0]}),
    "lambda NaN": lambda d: d.update(**{"lambda": [1.0, 1.0, math.nan]}),
    "lambda infinite": lambda d: d.update(**{"lambda": [math.inf, 1.0, 1.0]}),
    "sigma negative": lambda d: d.update(sigma=[0.0, -0.1, 0.1]),
    "metrics with NaN": lambda d: d.update(metrics={"snn_val": math.nan}),
    "history of numbers": lambda d: d.update(history=[1, 2]),
    "activation missing": lambda d: d.pop("activation"),
    "activation unknown": lambda d: d.update(activation={"activation": "relu", "timesteps": None,
                                                         "cuba_shift": "none"}),
    "activation matched without T": lambda d: d.update(activation={"activation": "cuba-matched",
                                                                   "timesteps": None, "cuba_shift": "none"}),
    "activation extra key": lambda d: d.update(activation={"activation": "qcfs", "timesteps": None,
                                                           "cuba_shift": "none", "x": 1}),
    "activation not an object": lambda d: d.update(activation="qcfs"),
}

#: tensor damages of both kinds of file
TENSORS = {
    "shape mismatch": _first_weight_wrong_shape,
    "missing model tensor": _drop_first,
    "extra tensor": lambda t: t.update(surplus=torch.zeros(2)),
    "wrong dtype": _wrong_dtype,
}

CHECKPOINT_TENSORS = {
    **TENSORS,
    "NaN weights": _nan_tensor("0.weight"),
    "infinite threshold": _nan_tensor("2.threshold"),
}


def _assert_refused(load, path, marker, match=None):
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=match) as info:
        load(path)
    assert time.perf_counter() - start < 2.0
    assert isinstance(info.value, ArtifactError)
    message = str(info.value)
    assert "\n" not in message and str(path.name) in message, message
    assert not Path(marker).exists(), "the file's code ran"


def _load_state(path):
    return load_train_state(path, *_trainer(), config=CONFIG, epochs=3)


def _new_checkpoint(path):
    save_checkpoint(path, _ckpt(_model()))
    return path


#: file kind: (make a valid one in a directory, load it); every damage is tried on both
KINDS = {"checkpoint": (lambda d: _new_checkpoint(d / CHECKPOINT), load_checkpoint),
         "train_state": (lambda d: _state_file(d / TRAIN_STATE), _load_state)}


@pytest.mark.parametrize("kind", ["checkpoint", "train_state"])
@pytest.mark.parametrize("case", sorted(BYTES))
def test_unreadable_files_are_refused_and_never_run(tmp_path, kind, case):
    make, load = KINDS[kind]
    path = make(tmp_path)
    marker = tmp_path / "marker-created-by-unpickling"
    BYTES[case](path, marker)
    _assert_refused(load, path, marker)


def test_foreign_files_are_named_for_what_they_are(tmp_path):
    marker = tmp_path / "marker"
    for maker, match in ((_torchscript, "zip archive"), (_torch_save_payload, "zip archive"),
                         (_pickle, "pickle"), (BYTES["empty"], "empty")):
        path = tmp_path / CHECKPOINT
        maker(path, marker)
        _assert_refused(load_checkpoint, path, marker, match=match)


STATE_DOC = {
    **DOC,
    "epoch beyond train.epochs": lambda d: d.update(epoch=3, history=[{"epoch": e} for e in (1, 2, 3, 4)],
                                                    best={"epoch": 1, "snn_val": 0.5}),
    "history shorter than epoch": lambda d: d.update(epoch=1),
    "history epochs repeated": lambda d: d.update(history=[{"epoch": 1}, {"epoch": 1}], epoch=1),
    "best without snn_val": lambda d: d.update(best={"epoch": 1}),
    "best from a future epoch": lambda d: d.update(best={"epoch": 5, "snn_val": 0.5}),
    "param_groups of another optimizer": lambda d: d["optimizer"]["param_groups"][0].pop("momentum"),
    "param_groups params shuffled": lambda d: d["optimizer"]["param_groups"][0]["params"].reverse(),
    "param_groups lr NaN": lambda d: d["optimizer"]["param_groups"][0].update(lr=math.nan),
    "optimizer state malformed": lambda d: d["optimizer"].update(state={"x": 1}),
    "optimizer a list": lambda d: d.update(optimizer=[]),
    "scheduler of another epoch": lambda d: d["scheduler"].update(last_epoch=7),
    "scheduler missing key": lambda d: d["scheduler"].pop("T_max"),
}

STATE_TENSORS = {
    **TENSORS,
    "NaN model weights": _nan_tensor("model/0.weight"),
    "NaN momentum": _nan_tensor("momentum_buffer"),
    "unknown optimizer tensor": lambda t: t.update({"optimizer/0/exp_avg": torch.zeros(16, 1, 3, 3)}),
    "optimizer tensor of no parameter": lambda t: t.update({"optimizer/999/momentum_buffer": torch.zeros(1)}),
    "momentum of the wrong shape": lambda t: t.update({"optimizer/0/momentum_buffer": torch.zeros(2)}),
    "rng state truncated": lambda t: t.update(torch_rng=t["torch_rng"][:100].clone()),
    "rng state as floats": lambda t: t.update(torch_rng=t["torch_rng"].float()),
    "missing rng": lambda t: t.pop("torch_rng"),
}


def _damages(kind, docs, tensors):
    return [pytest.param(kind, fn, None, id=f"{kind}-metadata-{name}") for name, fn in sorted(docs.items())] + \
        [pytest.param(kind, None, fn, id=f"{kind}-tensors-{name}") for name, fn in sorted(tensors.items())]


@pytest.mark.parametrize("kind, doc_fn, tensors_fn", _damages("checkpoint", {**DOC, **CHECKPOINT_DOC}, CHECKPOINT_TENSORS)
                         + _damages("train_state", STATE_DOC, STATE_TENSORS))
def test_bad_metadata_or_tensors_are_refused(tmp_path, kind, doc_fn, tensors_fn):
    make, load = KINDS[kind]
    path = make(tmp_path)
    _rewrite(path, doc_fn, tensors_fn)
    _assert_refused(load, path, tmp_path / "marker")


@pytest.mark.parametrize("kind, damage, field", [
    ("checkpoint", CHECKPOINT_DOC["lambda 0"], "'lambda.0'"),
    ("checkpoint", CHECKPOINT_DOC["activation unknown"], "'activation.activation'"),
    ("checkpoint", CHECKPOINT_DOC["input_shape too small for arch"], "'input_shape'"),
    ("checkpoint", CHECKPOINT_DOC["source kwargs a list"], "'source.kwargs'"),
    ("checkpoint", DOC["epoch float"], "'epoch'"),
    ("train_state", STATE_DOC["best without snn_val"], "'best.snn_val'"),
    ("train_state", STATE_DOC["history shorter than epoch"], "'history'"),
    ("train_state", STATE_DOC["optimizer a list"], "'optimizer'")])
def test_a_bad_metadata_field_is_named(tmp_path, kind, damage, field):
    make, load = KINDS[kind]
    path = make(tmp_path)
    _rewrite(path, damage)
    _assert_refused(load, path, tmp_path / "marker", match=f"field {field}")


def test_a_refused_resume_state_leaves_the_model_untouched(tmp_path):
    path = _state_file(tmp_path / TRAIN_STATE)
    _rewrite(path, STATE_DOC["scheduler of another epoch"])
    model, optimizer, scheduler = _trainer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_train_state(path, model, optimizer, scheduler, config=CONFIG, epochs=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_read_train_state_gives_the_last_epochs_model(tmp_path):
    path = _state_file(tmp_path / TRAIN_STATE, epoch=1)
    state = read_train_state(path, _model())
    assert state.epoch == 1 and [r["epoch"] for r in state.history] == [1, 2]
    assert set(state.model) == set(_model().state_dict())


@pytest.mark.parametrize("legacy", [LEGACY_CHECKPOINT, LEGACY_TRAIN_STATE])
def test_legacy_torch_pickle_run_directory_gets_a_clear_error(tmp_path, legacy):
    marker = tmp_path / "marker"
    _torch_save_payload(tmp_path / legacy, marker)
    loader = load_checkpoint if legacy == LEGACY_CHECKPOINT else _load_state
    target = CHECKPOINT if legacy == LEGACY_CHECKPOINT else TRAIN_STATE
    with pytest.raises(CheckpointError, match="older version .*re-train") as info:
        loader(tmp_path / target)
    assert legacy in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_missing_checkpoint_says_what_to_run(tmp_path):
    with pytest.raises(CheckpointError, match="pipeline train"):
        load_checkpoint(tmp_path / CHECKPOINT)


def test_a_key_added_after_training_takes_its_default_in_the_identity():
    """A run trained before train.activity_penalty (or model.factory, data.mean) existed stored no
    such key; its training is today's default, so resume and overwrite see the same run."""
    stored = {section: dict(body) for section, body in CONFIG.items()}
    for section, key in (("train", "activity_penalty"), ("model", "factory"), ("data", "mean")):
        stored[section].pop(key, None)
    assert training_identity(stored) == training_identity(CONFIG)
    changed = {**stored, "train": {**stored["train"], "activity_penalty": 1.0}}
    assert training_identity(changed) != training_identity(CONFIG)


def test_a_resume_state_from_before_cuba_timesteps_was_removed_resumes():
    """load_train_state compares identities as the overwrite check does: a stored
    snn.cuba_timesteps null (= snn.timesteps) is today's training, another value is not."""
    stored = {section: dict(body) for section, body in CONFIG.items()}
    stored["snn"] = {**stored.get("snn", {}), "cuba_timesteps": None}
    assert training_identity(stored) == training_identity(CONFIG)
    stored["snn"]["cuba_timesteps"] = 999
    assert training_identity(stored) != training_identity(CONFIG)
