"""What stock lava-dl netx does with each kind of file this project writes, one test per
statement of the README's ``.net`` section:

* cuba, sequential: the file's ``stock_netx_call``, built with exactly the arguments it states,
  loads in stock netx and runs bit for bit as this project's simulator (spike and potential
  readouts);
* if_soft (sequential or residual): no ``stock_netx_call``; stock netx raises
  ``AttributeError: 'NoneType' object has no attribute 'pop'`` at the first IF_SOFT layer;
* residual cuba: no ``stock_netx_call``; stock netx raises
  ``NotImplementedError: concat is not implemented.`` at the first 'concat' layer.
"""
from __future__ import annotations

import ast
import contextlib
import io

import h5py
import numpy as np
import pytest

from hardware.ir import Dense, Input, Network, Neuron, readout_neuron
from hardware.formats.netx import read_net, write_net
from hardware.simulator import simulate
from tests.test_netx_io import random_ir
from tests.test_residual_netx import NETS

T = 4


def stored_call(path) -> dict | None:
    """The keyword arguments of the file's ``stock_netx_call`` (None when it has none), parsed
    from the text itself: ``<this file>`` stands for the file."""
    with h5py.File(path, "r") as f:
        if "stock_netx_call" not in f.attrs:
            return None
        text = f.attrs["stock_netx_call"]
    call = ast.parse(text.replace("<this file>", repr(str(path))), mode="eval").body
    assert isinstance(call, ast.Call) and ast.unparse(call.func) == "lava.lib.dl.netx.hdf5.Network"
    assert not call.args
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


def _netx(**kwargs):
    from lava.lib.dl.netx.hdf5 import Network as NetxNetwork
    with contextlib.redirect_stdout(io.StringIO()):
        return NetxNetwork(**kwargs)


def _cuba_net(readout: str) -> Network:
    rng = np.random.default_rng(5)
    w1, w2 = rng.integers(-12, 13, (8, 6)), rng.integers(-40, 41, (4, 8))
    for w in (w1, w2):
        w.flat[0], w.flat[1] = 12, -12
    out = readout_neuron(True) if readout == "potential" else Neuron("cuba", 50)
    return Network(input=Input((6,)), integer=True, input_bits=8, readout=readout, layers=[
        Dense(weight=w1, bias=None, neuron=Neuron("cuba", 900), name="h"),
        Dense(weight=w2, bias=rng.integers(-5, 6, 4), neuron=out, name="o")])


def _run_stock(kwargs: dict, x: np.ndarray, T: int = T):
    """Feed sample k of ``x`` (n, *input shape in C order) as source columns kT .. kT+T-1 (the
    file's note; netx takes the input as (W, H, C)); output spikes and the output block's v at
    the end of every sample's window, per sample."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    lnet = _netx(**kwargs)
    n, L = len(x), len(lnet.layers)
    steps = n * T + L
    x_netx = np.moveaxis(np.repeat(x.transpose(0, *range(x.ndim - 1, 0, -1)), T, axis=0), 0, -1)
    cols = np.zeros(x_netx.shape[:-1] + (steps,), dtype=np.int32)
    cols[..., : n * T] = x_netx
    source, sink = Source(data=cols), Sink(shape=lnet.out.shape, buffer=steps)
    source.s_out.connect(lnet.inp)
    lnet.out.connect(sink.a_in)
    cfg, v, done = Loihi2SimCfg(select_tag="fixed_pt"), [], 0
    try:
        for k in range(n):  # stop at the end of each window, before the next reset
            end = (k + 1) * T + L
            lnet.run(condition=RunSteps(num_steps=end - done), run_cfg=cfg)
            v.append(np.asarray(lnet.out_layer.neuron.v.get()).astype(np.int64))
            done = end
        lnet.run(condition=RunSteps(num_steps=steps - done), run_cfg=cfg)
        out = sink.data.get().astype(np.int64)
    finally:
        lnet.stop()
    spikes = np.stack([out[:, k * T + L: k * T + L + T].T for k in range(n)], axis=1)
    return spikes, np.stack(v)


@pytest.mark.lava
@pytest.mark.parametrize("readout", ["spikes", "potential"])
def test_cuba_sequential_file_runs_in_stock_netx_with_its_stored_call(tmp_path, readout):
    net = _cuba_net(readout)
    path = write_net(net, tmp_path / "cuba.net", steps_per_sample=T)
    kwargs = stored_call(path)
    assert kwargs == {"net_config": str(path), "input_message_bits": 8, "reset_interval": T,
                      "reset_offset": 1}
    x = np.random.default_rng(6).integers(0, 256, (3, 6))
    spikes, v = _run_stock(kwargs, x)
    sim = simulate(read_net(path), x, T)
    assert np.array_equal(spikes, sim.output_spikes.numpy())
    assert np.array_equal(v, sim.output_potential[-1].numpy())
    if readout == "spikes":
        assert int(spikes.sum()) > 0
    else:
        assert int(spikes.sum()) == 0 and int(np.abs(v).max()) > 0


def _if_soft_files(tmp_path) -> dict:
    return {"sequential": write_net(random_ir(4, kinds=("if_soft",)), tmp_path / "soft.net",
                                    steps_per_sample=T),
            "residual-conv": write_net(NETS["conv-if_soft"], tmp_path / "res_conv.net",
                                       steps_per_sample=T),
            "residual-dense": write_net(NETS["dense-if_soft-potential"], tmp_path / "res_dense.net",
                                        steps_per_sample=T)}


@pytest.mark.lava
def test_if_soft_files_state_no_stock_call_and_stock_netx_fails_on_none_pop(tmp_path):
    for kind, path in _if_soft_files(tmp_path).items():
        assert stored_call(path) is None, kind
        with h5py.File(path, "r") as f:
            assert "IF_SOFT" in f.attrs["stock_netx_note"], kind
            assert int(f.attrs["input_message_bits"]) > 0  # what a user of another loader needs
        with pytest.raises(AttributeError, match="^'NoneType' object has no attribute 'pop'$"):
            _netx(net_config=str(path), input_message_bits=8, reset_interval=T, reset_offset=1)


@pytest.mark.lava
@pytest.mark.parametrize("name", ["dense-cuba", "conv-cuba-potential"])
def test_residual_cuba_file_states_no_stock_call_and_stock_netx_refuses_concat(tmp_path, name):
    path = write_net(NETS[name], tmp_path / "res.net", steps_per_sample=T)
    assert stored_call(path) is None
    with pytest.raises(NotImplementedError, match="^concat is not implemented.$"):
        _netx(net_config=str(path), input_message_bits=8, reset_interval=T, reset_offset=1)
