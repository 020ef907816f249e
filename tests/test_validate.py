"""The one validator of integer networks, the hardened .net reader, atomic writes and
the stock-netx helper."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from hardware.errors import IRError, LoihiRangeError, NetxFormatError, QuantizationError
from hardware.ir import Conv, Dense, Flatten, Input, Network, Neuron, readout_neuron
from hardware.formats.netx import MAX_DATASET_ELEMENTS, read_net, write_net
from hardware.spec import LOIHI2
from hardware.ir.validate import netx_limits, simulator_limits, validate_network


def small_net(**changes) -> Network:
    """conv -> flatten -> dense -> potential readout, every value inside the limits."""
    rng = np.random.default_rng(0)
    conv = Conv(weight=rng.integers(-20, 21, (2, 1, 3, 3)), bias=np.array([3, -3]),
                neuron=Neuron("cuba", 40), padding=(1, 1), name="c0")
    dense = Dense(weight=rng.integers(-30, 31, (5, 32)), bias=None, neuron=Neuron("cuba", 30),
                  name="d1")
    out = Dense(weight=rng.integers(-9, 10, (3, 5)), bias=np.zeros(3, dtype=int),
                neuron=readout_neuron(integer=True), name="out")
    for w in (conv.weight, dense.weight, out.weight):
        w.flat[0], w.flat[1] = 7, -7  # netx's dense rescaling is then exact
    kw = {"integer": True, "input_bits": 8, "readout": "potential", **changes}
    return Network(input=Input((1, 4, 4)), layers=[conv, Flatten(name="f"), dense, out], **kw)


def _replace_layer(net: Network, name: str, **changes) -> Network:
    layers = [dataclasses.replace(l, **changes) if l.name == name else l for l in net.layers]
    return _unchecked(net, layers)


def _unchecked(net: Network, layers: list) -> Network:
    """A Network with these layers, bypassing the IR's own shape checks (the validator
    must catch what a hand-built or mutated IR carries)."""
    new = object.__new__(Network)
    new.__dict__.update({**net.__dict__, "layers": layers})
    return new


# --------------------------------------------------------------------------
# the validator: each limit violated once
# --------------------------------------------------------------------------

VIOLATIONS = [
    ("d1", {"weight": "w128"}, "weight value 128 outside \\[-128, 127\\]"),
    ("d1", {"weight": "w-129"}, "weight value -129 outside"),
    ("d1", {"weight": "half"}, "weight must be integers, found 0.5"),
    ("d1", {"weight": "bool"}, "weight must be integers, got bool"),
    ("d1", {"weight": "complex"}, "weight must be integers, got complex"),
    ("d1", {"weight": "nan"}, "weight must be integers, found nan"),
    ("d1", {"weight_exp": 1}, "weight_exp value 1 outside \\[0, 0\\]"),
    ("c0", {"bias": np.array([4096, 0])}, "bias value 4096 outside \\[-4096, 4095\\]"),
    ("c0", {"bias": np.array([1, 2, 3])}, "bias shape \\(3,\\) is not \\(2,\\)"),
    ("d1", {"neuron": Neuron("cuba", 0)}, "threshold \\(vThMant\\) value 0 outside \\[1, 131071\\]"),
    ("d1", {"neuron": Neuron("cuba", 131072)}, "threshold \\(vThMant\\) value 131072 outside"),
    ("d1", {"neuron": Neuron("cuba", 1.5)}, "threshold \\(vThMant\\) must be integers, found 1.5"),
    ("d1", {"neuron": Neuron("cuba", 5, du=4096)}, "du value 4096 outside \\[0, 4095\\]"),
    ("d1", {"neuron": Neuron("cuba", 5, dv=-1)}, "dv value -1 outside"),
    ("d1", {"neuron": Neuron("cuba", 5, bias_exp=5)}, "bias_exp value 5 outside \\[6, 6\\]"),
    ("c0", {"stride": (0, 1)}, "stride value 0 outside \\[1, None\\]"),
    ("c0", {"padding": (-1, 0)}, "padding value -1 outside"),
    ("c0", {"dilation": (1, 0)}, "dilation value 0 outside"),
    ("c0", {"groups": 2}, "groups 2 do not fit 1 input"),
    ("c0", {"stride": (1.5, 1)}, "stride must be integers, found 1.5"),
    ("c0", {"weight": "k9"}, "kernel 9 with dilation 1 does not fit the padded input size 6"),
    ("c0", {"weight_exp": 1}, "weight_exp value 1 outside \\[0, 0\\]"),
    ("d1", {"weight": "w_wrong_in"}, "input shape \\(32,\\) does not match weight shape \\(5, 31\\)"),
]


def _bad_value(layer, kind):
    w = np.asarray(layer.weight)
    return {"w128": np.where(w == w.max(), 128, w), "w-129": np.where(w == w.min(), -129, w),
            "half": np.where(np.arange(w.size).reshape(w.shape) == 3, 0.5, w), "bool": w != 0, "complex": w + 0j, "nan": np.where(w == w.max(), np.nan, w),
            "k9": np.ones((2, 1, 9, 9), dtype=int), "w_wrong_in": w[:, :31]}[kind]


@pytest.mark.parametrize("layer,changes,match", VIOLATIONS)
def test_each_limit_violated_once_names_layer_field_value_and_limit(layer, changes, match):
    net = small_net()
    target = next(l for l in net.layers if l.name == layer)
    changes = {k: _bad_value(target, v) if isinstance(v, str) else v for k, v in changes.items()}
    bad = _replace_layer(net, layer, **changes)
    with pytest.raises(LoihiRangeError, match=f"^layer {layer}: {match}"):
        validate_network(bad)


def test_network_level_limits():
    net = small_net()
    validate_network(net)  # the reference case is valid under every set of limits
    validate_network(net, netx_limits())
    validate_network(net, simulator_limits())
    cases = [(dataclasses.replace(net, input_bits=25), "input_bits value 25 outside \\[1, 24\\]"),
             (dataclasses.replace(net, input_bits=None), "input_bits is missing"),
             (dataclasses.replace(net, input_bits=True), "input_bits must be integers, got bool"),
             (_unchecked(dataclasses.replace(net, readout="spikes"), [Flatten()]),
              "no conv/dense layer")]
    for bad, match in cases:
        with pytest.raises(LoihiRangeError, match=match):
            validate_network(bad)
    floating = _unchecked(net, net.layers)
    floating.integer = False
    with pytest.raises(LoihiRangeError, match="not an integer IR"):
        validate_network(floating)
    shaped = _unchecked(net, net.layers)
    shaped.input = Input((1, 4.5, 4))
    with pytest.raises(LoihiRangeError, match="input shape must be integers, found 4.5"):
        validate_network(shaped)
    fired = _replace_layer(net, "out", neuron=Neuron("cuba", 100))
    with pytest.raises(LoihiRangeError, match="^layer out: a potential readout layer must be"):
        validate_network(fired)


def test_one_exception_type_caught_by_every_old_except_site():
    assert issubclass(LoihiRangeError, IRError) and issubclass(LoihiRangeError, QuantizationError)
    assert issubclass(LoihiRangeError, ValueError)


def test_the_three_sets_of_limits():
    """netx's own default neuron and rescaled dense weights pass for files of others,
    never for this project's networks; the simulator runs them too."""
    net = _replace_layer(small_net(readout="spikes"), "d1", weight_exp=-2,
                         neuron=Neuron("cuba", LOIHI2.netx_threshold_max, du=-1, dv=4096))
    net = _replace_layer(net, "out", neuron=Neuron("cuba", 5))
    validate_network(net, netx_limits())
    with pytest.raises(LoihiRangeError, match="layer d1: weight_exp value -2 outside \\[0, 0\\]"):
        validate_network(net)
    with pytest.raises(LoihiRangeError, match="layer d1: threshold \\(vThMant\\) value 131072"):
        validate_network(_replace_layer(net, "d1", weight_exp=0))
    # the simulator runs netx's default neuron as Lava does (issue 18), nothing beyond it
    validate_network(_replace_layer(net, "d1", neuron=Neuron("cuba", 5, du=-1, dv=4096)),
                     simulator_limits())
    with pytest.raises(LoihiRangeError, match="layer d1: du value -2"):
        validate_network(_replace_layer(net, "d1", neuron=Neuron("cuba", 5, du=-2)),
                         simulator_limits())
    wide = _replace_layer(net, "d1", weight=np.full((5, 32), 255))
    validate_network(wide, netx_limits())
    with pytest.raises(LoihiRangeError, match="weight value 256 outside \\[-256, 255\\]"):
        validate_network(_replace_layer(net, "d1", weight=np.full((5, 32), 256)), netx_limits())


def test_ir_refuses_stride_zero_instead_of_dividing_by_it():
    with pytest.raises(IRError, match="stride"):
        Network(input=Input((1, 4, 4)), layers=[Conv(weight=np.ones((1, 1, 3, 3)), bias=None,
                                                     neuron=Neuron("cuba", 1), stride=(0, 1))], readout="spikes")


# --------------------------------------------------------------------------
# the reader: every file validated, sizes checked before reading
# --------------------------------------------------------------------------

@pytest.fixture
def good_file(tmp_path):
    return write_net(small_net(), tmp_path / "model.net", steps_per_sample=4)


def _set(path, key, data, attrs=None):
    with h5py.File(path, "a") as f:
        if key is not None:
            del f[key]
            f[key] = data
        for k, v in (attrs or {}).items():
            if v is None:
                del f.attrs[k]
            else:
                f.attrs[k] = v


READER_CASES = [
    ("layer/3/weight", np.full((5, 32), 1000, dtype=np.int32), None, "layer d1: weight value 1000 outside"),
    ("layer/3/weight", np.full((5, 32), 200, dtype=np.int32), None, "layer d1: weight value 200 outside"),
    ("layer/3/neuron/vThMant", 0, None, "layer d1: threshold \\(vThMant\\) value 0 outside \\[1, "),
    ("layer/3/neuron/vThMant", 1.5, None, "layer 3 \\(dense\\) neuron: vThMant must be integers, found 1.5"),
    ("layer/3/weight", np.full((5, 32), 0.5), None, "layer 3 \\(dense\\): weight must be integers, found 0.5"),
    ("layer/3/weight", np.ones((5, 32), dtype=bool), None, "weight must be integers, got bool"),
    ("layer/3/weight", np.ones((5, 32), dtype=complex), None, "unsupported type complex"),
    ("layer/0/shape", np.array([1, 8.5, 4]), None, "layer 0 \\(input\\): shape must be integers, found 8.5"),
    ("layer/1/stride", np.array([0, 1]), None, "layer 1 \\(conv\\): stride value 0 outside"),
    ("layer/1/bias", np.array([5000, 1]), None, "layer c0: bias value 5000 outside"),
    ("layer/1/neuron/iDecay", 4097, None, "layer c0: du value 4096 outside"),
    ("layer/3/shape", np.array([20_000]), None, "weight shape \\(5, 32\\) does not match 20000 outputs"),
    (None, None, {"provenance": "[1, 2]"}, "provenance attribute is a JSON list, not an object"),
    (None, None, {"provenance": "{"}, "provenance attribute is not valid JSON"),
    (None, None, {"provenance": "[" * 100_000}, "provenance attribute is not valid JSON"),
    (None, None, {"input_bits": 30, "input_message_bits": 30}, "input_message_bits. value 30 outside \\[1, 24\\]"),
    (None, None, {"input_message_bits": 4}, "input_message_bits = 4 disagrees with input_bits = 8"),
    (None, None, {"reset_interval": 0}, "reset_interval' value 0 outside"),
    (None, None, {"ir_version": "9.9"}, "IR version '9.9' is not supported"),
]


@pytest.mark.parametrize("key,data,attrs,match", READER_CASES)
def test_reader_refuses_with_one_line_naming_file_and_layer(good_file, key, data, attrs, match):
    _set(good_file, key, data, attrs)
    with pytest.raises(NetxFormatError, match=f"^{good_file}: .*{match}") as ei:
        read_net(good_file)
    assert "\n" not in str(ei.value)


def test_foreign_file_is_range_checked_too(good_file):
    """Without this project's attribute the file is read as netx + Lava would run it,
    and still checked: a conv weight of 1000 or a threshold of 0 is refused."""
    _set(good_file, "layer/1/weight", np.full((2, 1, 3, 3), 1000, dtype=np.int32),
         {"project": None})
    with pytest.raises(NetxFormatError, match="conv1: weight value 1000 outside \\[-256, 255\\]"):
        read_net(good_file)
    _set(good_file, "layer/1/weight", np.ones((2, 1, 3, 3), dtype=np.int32))
    _set(good_file, "layer/1/neuron/vThMant", 0)
    with pytest.raises(NetxFormatError, match="conv1: threshold \\(vThMant\\) value 0 outside"):
        read_net(good_file)


def test_links_that_leave_the_file_or_loop_are_refused(good_file, tmp_path):
    _set(good_file, None, None)
    with h5py.File(good_file, "a") as f:
        del f["layer/3/weight"]
        f["layer/3/weight"] = h5py.SoftLink("/layer/3/weight")  # a cycle
    with pytest.raises(NetxFormatError, match="layer 3 \\(dense\\): 'weight' is a SoftLink"):
        read_net(good_file)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as g:
        g["w"] = np.ones((5, 32), dtype=np.int32)
    with h5py.File(good_file, "a") as f:
        del f["layer/3/weight"]
        f["layer/3/weight"] = h5py.ExternalLink(str(other), "/w")
    with pytest.raises(NetxFormatError, match="'weight' is a ExternalLink"):
        read_net(good_file)


@pytest.mark.parametrize("what", ["dense 20k x 60k", "bias 1e9", "input shape", "chunked bomb",
                                  "dataset beyond the file"])
def test_memory_bombs_fail_fast_without_allocating(good_file, what):
    with h5py.File(good_file, "a") as f:
        if what == "dense 20k x 60k":
            del f["layer/3/weight"], f["layer/3/shape"]
            f["layer/3"].create_dataset("weight", shape=(60_000, 20_000), dtype="i4")
            f["layer/3/shape"] = np.array([60_000])
        elif what == "bias 1e9":
            del f["layer/1/bias"]
            f["layer/1"].create_dataset("bias", shape=(10 ** 9,), dtype="i4")
        elif what == "input shape":
            del f["layer/0/shape"]
            f["layer/0/shape"] = np.array([1, 10 ** 6, 10 ** 6])
        elif what == "chunked bomb":  # zeros compress ~1000:1
            del f["layer/3/weight"]
            f["layer/3"].create_dataset("weight", shape=(5, MAX_DATASET_ELEMENTS // 4),
                                        dtype="i4", chunks=(1, 1 << 20), compression="gzip")
        else:  # declared contiguous, never written: the file cannot hold it
            del f["layer/3/weight"]
            f["layer/3"].create_dataset("weight", shape=(5, 32), dtype="i4")
    start = time.perf_counter()
    with pytest.raises(NetxFormatError) as ei:
        read_net(good_file)
    assert time.perf_counter() - start < 1.0
    assert str(ei.value).startswith(f"{good_file}: ")
    assert os.path.getsize(good_file) < 10 << 20


def test_truncated_and_corrupted_headers(good_file):
    data = good_file.read_bytes()
    for cut in (8, 100, 512, len(data) // 2, len(data) - 1):
        good_file.write_bytes(data[:cut])
        with pytest.raises(NetxFormatError, match=f"^{good_file}: "):
            read_net(good_file)
    broken = bytearray(data)
    broken[8:48] = b"\xff" * 40  # superblock fields
    good_file.write_bytes(bytes(broken))
    with pytest.raises(NetxFormatError, match=f"^{good_file}: "):
        read_net(good_file)


_FLIP_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from hardware.errors import NetxFormatError
    from hardware.formats.netx import read_net
    path, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data = open(path, "rb").read()
    rng = np.random.default_rng(seed)
    worst, outcomes = 0.0, {"ok": 0, "refused": 0}
    for i in range(n):
        flipped = bytearray(data)
        for pos in rng.integers(0, len(data), 3):
            flipped[pos] ^= 1 << int(rng.integers(0, 8))
        target = f"{path}.{i}.net"
        open(target, "wb").write(bytes(flipped))
        start = time.perf_counter()
        try:
            read_net(target)
            outcomes["ok"] += 1
        except NetxFormatError as e:
            assert "\\n" not in str(e), str(e)
            outcomes["refused"] += 1
        worst = max(worst, time.perf_counter() - start)
    print(worst, outcomes)
""")


def test_bit_flipped_files_never_hang_or_escape(good_file):
    """Random bit flips: each read returns or raises NetxFormatError, within seconds."""
    proc = subprocess.run([sys.executable, "-c", _FLIP_SCRIPT, str(good_file), "60", "7"],
                          capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    worst = float(proc.stdout.split()[0])
    assert worst < 5.0, proc.stdout


# --------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------

def test_write_killed_midway_leaves_the_old_file_and_no_temp(good_file, monkeypatch):
    import hardware.formats.netx as netx_io
    before = good_file.read_bytes()
    real = netx_io._write_layer
    calls = []

    def dies_on_third_layer(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a signal would, mid-write
        real(*args)

    monkeypatch.setattr(netx_io, "_write_layer", dies_on_third_layer)
    changed = _replace_layer(small_net(), "d1", neuron=Neuron("cuba", 31))
    with pytest.raises(KeyboardInterrupt):
        write_net(changed, good_file)
    assert good_file.read_bytes() == before
    assert sorted(p.name for p in good_file.parent.iterdir()) == ["model.net"]
    assert read_net(good_file).layers[2].neuron.threshold == 30


def test_a_partial_temp_file_is_not_the_network(good_file):
    """kill -9 cannot clean up: the partial file has another name, and is refused anyway."""
    partial = good_file.with_name(f"{good_file.name}.12345.tmp")
    partial.write_bytes(good_file.read_bytes()[:2000])
    assert read_net(good_file).layers[2].neuron.threshold == 30
    with pytest.raises(NetxFormatError):
        read_net(partial)


# --------------------------------------------------------------------------
# self-describing file, stock netx helper
# --------------------------------------------------------------------------

def test_file_states_what_stock_netx_needs(good_file):
    from hardware.runtime.stock_netx import stock_netx_arguments
    with h5py.File(good_file, "r") as f:
        assert int(f.attrs["input_message_bits"]) == 8
        assert int(f.attrs["reset_interval"]) == 4 and int(f.attrs["reset_offset"]) == 1
        call = f.attrs["stock_netx_call"]
        assert "input_message_bits=8, reset_interval=4, reset_offset=1" in call
        assert "neuron.v" in f.attrs["stock_netx_note"]
    assert stock_netx_arguments(good_file) == {"net_config": str(good_file),
                                               "input_message_bits": 8, "reset_interval": 4,
                                               "reset_offset": 1}
    assert stock_netx_arguments(good_file, reset_interval=9)["reset_interval"] == 9


@pytest.mark.lava
def test_stock_network_runs_in_lava_like_the_simulator(tmp_path):
    """Three samples through the helper's stock netx network == simulate(), bit for bit."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    from hardware.simulator import simulate
    from hardware.runtime.stock_netx import stock_network

    rng = np.random.default_rng(3)
    w1 = rng.integers(-12, 13, (8, 6))
    w2 = rng.integers(-40, 41, (4, 8))
    for w in (w1, w2):
        w.flat[0], w.flat[1] = 12, -12
    net = Network(input=Input((6,)), integer=True, input_bits=8, layers=[
        Dense(weight=w1, bias=None, neuron=Neuron("cuba", 900), name="h"),
        Dense(weight=w2, bias=rng.integers(-5, 6, 4), neuron=Neuron("cuba", 50), name="o")], readout="spikes")
    T, n = 6, 3
    path = write_net(net, tmp_path / "cuba.net", steps_per_sample=T)
    x = rng.integers(0, 256, (n, 6))
    lnet = stock_network(path)
    steps = n * T + len(net.layers)
    cols = np.zeros((6, steps), dtype=np.int32)
    cols[:, : n * T] = np.repeat(x, T, axis=0).T  # sample k in columns kT .. kT+T-1
    source, sink = Source(data=cols), Sink(shape=lnet.out.shape, buffer=steps)
    source.s_out.connect(lnet.inp)
    lnet.out.connect(sink.a_in)
    try:
        lnet.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        out = sink.data.get().astype(np.int64)
    finally:
        lnet.stop()
    sim = simulate(read_net(path), x, T).output_spikes.numpy()  # (T, n, 4)
    L = len(net.layers)
    lava = np.stack([out[:, k * T + L: k * T + L + T].T for k in range(n)], axis=1)
    assert int(sim.sum()) > 0
    assert np.array_equal(lava, sim)
