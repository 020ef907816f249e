"""run_lava / build_lava_network against the reference simulator, bit for bit.

Random small integer IRs within LOIHI2 ranges, thresholds calibrated so that
neurons spike at moderate rates (asserted, so no test passes vacuously).
"""
import multiprocessing
import time

import numpy as np
import pytest

from hardware import ir
from hardware.errors import LavaBackendError
from hardware.runtime.network import build_lava_network
from hardware.runtime.runner import run_lava
from hardware.simulator import simulate
from hardware.spec import LOIHI2
from tests.lava_continuous import continuous_block_spikes

# Lava's model discovery must not meet any module it cannot import (the
# processes live in their own subpackages): the warning is an error here.
pytestmark = [pytest.mark.lava, pytest.mark.filterwarnings("error:Cannot import module")]


def _neuron(kind, threshold, rng):
    if kind == "if_soft":
        return ir.Neuron("if_soft", threshold=int(threshold), du=LOIHI2.if_du, dv=LOIHI2.if_dv)
    return ir.Neuron("cuba", threshold=int(threshold), du=int(rng.integers(0, LOIHI2.decay_max + 1)),
                     dv=int(rng.integers(0, 1024)))


def random_net(seed, kind, conv, input_bits=4, n_samples=3, T=6):
    """A random integer IR (dense-only or conv+flatten+dense) and inputs.

    Thresholds are calibrated layer by layer on the simulator: θ_l is a
    quantile of the mean per-step synaptic input of layer l, so some neurons
    fire and others do not.
    """
    rng = np.random.default_rng(seed)
    wlo, whi = LOIHI2.weight_min // 3, LOIHI2.weight_max // 2
    if conv:
        inp = ir.Input(shape=(2, 5, 4))
        # asymmetric kernel, stride and padding catch any (x, y) / (h, w) mix-up
        layers = [ir.Conv(weight=rng.integers(wlo, whi, size=(3, 2, 3, 2)),
                          bias=rng.integers(-3, 4, size=3), neuron=_neuron(kind, 1, rng),
                          stride=(2, 1), padding=(1, 0), name="conv0"),
                  ir.Flatten()]
        n_in = int(np.prod(ir.Network(input=inp, layers=layers[:1], readout="spikes").shapes()[-1]))
    else:
        inp = ir.Input(shape=(6,))
        layers = [ir.Dense(weight=rng.integers(wlo, whi, size=(8, 6)),
                           bias=rng.integers(-3, 4, size=8), neuron=_neuron(kind, 1, rng),
                           name="dense0")]
        n_in = 8
    layers.append(ir.Dense(weight=rng.integers(wlo, whi, size=(5, n_in)),
                           bias=rng.integers(-3, 4, size=5), neuron=_neuron(kind, 1, rng),
                           name="dense1"))
    net = ir.Network(input=inp, layers=layers, integer=True, input_bits=input_bits, readout="spikes")
    x = rng.integers(0, (1 << input_bits), size=(n_samples,) + tuple(inp.shape))

    # calibrate thresholds
    prev = x.reshape(n_samples, -1).astype(float)  # mean per-step input of layer 0
    weighted = [i for i, layer in enumerate(net.layers) if isinstance(layer, (ir.Conv, ir.Dense))]
    for li, idx in enumerate(weighted):
        layer = net.layers[idx]
        if isinstance(layer, ir.Conv):
            import torch
            a = torch.nn.functional.conv2d(
                torch.tensor(x, dtype=torch.float64),
                torch.tensor(layer.weight, dtype=torch.float64),
                stride=layer.stride, padding=layer.padding).numpy().reshape(n_samples, -1)
        else:
            a = prev @ layer.weight.T
        pos = a[a > 0]
        theta = max(1, int(np.quantile(pos, 0.5))) if pos.size else 1
        layer.neuron.threshold = min(theta, LOIHI2.threshold_max)
        res = simulate(net, x, T)
        prev = res.layer_counts[li].numpy().reshape(n_samples, -1) / T
    return net, x


def _sim_out(net, x, T):
    return simulate(net, x, T, pipelined=False).output_spikes.numpy().transpose(1, 0, 2)


def _assert_moderate(spikes):
    total = int(spikes.sum())
    assert 0 < total < spikes.size, f"{total} spikes of {spikes.size}: not a moderate rate"


@pytest.mark.parametrize("kind", ["if_soft", "cuba"])
@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
@pytest.mark.parametrize("seed", [0, 1])
def test_run_lava_equals_simulator(kind, conv, seed):
    T = 5
    net, x = random_net(seed, kind, conv, T=T)
    ref = _sim_out(net, x, T)
    _assert_moderate(ref)
    res = run_lava(net, x, T, progress=False)
    assert res.output_spikes.dtype == np.int64
    assert res.output_spikes.shape == ref.shape
    assert np.array_equal(res.output_spikes, ref)
    assert res.steps_run == len(x) * T + len(net.weighted_layers)
    assert res.samples_per_s > 0 and res.backend == "loihi2-sim"


def test_run_lava_time_varying_input_and_chunks():
    T = 4
    net, x = random_net(2, "if_soft", False, T=T)
    rng = np.random.default_rng(5)
    xv = rng.integers(0, 16, size=(2, T) + tuple(net.input.shape))
    ref = _sim_out(net, xv, T)
    _assert_moderate(ref)
    res = run_lava(net, xv, T, progress=False, chunk_steps=3)
    assert np.array_equal(res.output_spikes, ref)


def test_loihi2simcfg_selects_bit_accurate_models():
    net, x = random_net(3, "if_soft", True, n_samples=1, T=2)
    res = run_lava(net, x, 2, progress=False)
    m = res.models
    # leaf processes inside the netx blocks (the blocks are hierarchical)
    assert m["Dense"] == ["PyDenseModelBitAcc"]
    assert m["Conv"] == ["PyConvModelFixed"]
    assert m["IFSoftReset"] == ["PyIFSoftResetModelBitAcc"]
    assert m["RingBuffer"] == sorted(["PySendModelFixed", "PyReceiveModelFixed"])


def test_all_layers_every_step_equal_pipelined_simulator():
    """No reset, one continuous run from step 1: Lava == the pipelined simulator
    for every layer at every step (this also checks that an unreset first
    window starts from v0)."""
    T = 8
    net, x = random_net(4, "if_soft", True, n_samples=1, T=T)
    ref = simulate(net, x, T, pipelined=True, record_spikes=True)
    lnet = build_lava_network(net, reset_interval=None)
    got = continuous_block_spikes(lnet, x[0], T)
    assert sum(int(t.sum()) for t in ref.layer_spike_trains) > 0
    for lava_spikes, train in zip(got, ref.layer_spike_trains):
        train = train.numpy()[:, 0].astype(np.int64)  # (T, *out_shape)
        if lava_spikes.ndim == 4:
            lava_spikes = lava_spikes.transpose(3, 2, 1, 0)  # (T, C, H, W)
        else:
            lava_spikes = np.moveaxis(lava_spikes, -1, 0)
        assert np.array_equal(lava_spikes.astype(np.int64), train)


def test_stock_netx_file_equals_own_loader(tmp_path):
    from hardware.formats.netx import write_net

    T = 5
    net, x = random_net(6, "cuba", True, n_samples=2, T=T)
    path = write_net(net, tmp_path / "cuba.net")
    stock = run_lava(net, x, T, net_path=str(path), progress=False)
    own = run_lava(net, x, T, progress=False)
    assert stock.loader.startswith("stock")
    assert own.loader.startswith("hardware.runtime.network")
    _assert_moderate(own.output_spikes)
    assert np.array_equal(stock.output_spikes, own.output_spikes)
    assert np.array_equal(own.output_spikes, _sim_out(net, x, T))


def test_hw_backend_without_lava_loihi_raises():
    from lava.utils import loihi
    if loihi.is_installed():
        pytest.skip("lava-loihi is installed here")
    net, x = random_net(0, "cuba", False, n_samples=1, T=2)
    with pytest.raises(LavaBackendError, match="lava-loihi"):
        run_lava(net, x, 2, backend="loihi2-hw", progress=False)


def test_hw_backend_refuses_if_soft():
    net, x = random_net(0, "if_soft", False, n_samples=1, T=2)
    with pytest.raises(LavaBackendError, match="snn.neuron: cuba"):
        run_lava(net, x, 2, backend="loihi2-hw", progress=False)


def test_bad_inputs_raise():
    from hardware.errors import QuantizationError
    net, x = random_net(0, "if_soft", False, n_samples=1, T=2)
    with pytest.raises(QuantizationError):
        run_lava(net, x + 16, 2, progress=False)
    with pytest.raises(LavaBackendError):
        run_lava(net, x[:, :3], 2, progress=False)
    with pytest.raises(LavaBackendError):
        run_lava(net, x, 2, backend="gpu", progress=False)


def _no_children(timeout=10.0):
    deadline = time.time() + timeout
    while multiprocessing.active_children() and time.time() < deadline:
        time.sleep(0.1)
    return multiprocessing.active_children() == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_error_inside_run_stops_runtime(monkeypatch, exc):
    import hardware.runtime.runner as runner

    class FailingBar:
        def __init__(self, *a, **k):
            pass

        def update(self, n):
            raise exc("boom")

        def close(self):
            pass

    monkeypatch.setattr(runner, "tqdm", FailingBar)
    net, x = random_net(0, "if_soft", False, n_samples=2, T=3)
    with pytest.raises(exc, match="boom"):
        run_lava(net, x, 3, chunk_steps=2)
    assert _no_children()


def test_board_measurement_path_is_selected_only_with_lava_loihi():
    """On a board, lava-loihi's loihi2_profiler measures power and time; without it the
    path reports why it is unavailable (and the energy stays an estimate)."""
    from hardware.runtime.board import board_profilers, board_profilers_available

    ok, reason = board_profilers_available()
    if not ok:
        assert "lava-loihi" in reason and board_profilers(10) is None
        pytest.skip(reason)
    power, timer = board_profilers(10)  # pragma: no cover - needs lava-loihi
    assert hasattr(power, "attach") or callable(power)
