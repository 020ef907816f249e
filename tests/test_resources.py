"""Resource fit: networks known to fit and known not to, under stated limits."""
import dataclasses
import math

import numpy as np
import pytest

from hardware.errors import ResourceError, ToolkitError
from hardware.ir import Conv, Dense, Flatten, Input, Network, Neuron
from hardware.analysis.resources import check_fit, require_fit
from hardware.spec import LOIHI2

NEURON = Neuron("if_soft", 64)


def dense_net(sizes, input_neuron=False) -> Network:
    layers = [Dense(np.zeros((o, i), np.int64), None, NEURON, name=f"fc{k + 1}")
              for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))]
    return Network(Input((sizes[0],), neuron=NEURON if input_neuron else None), layers,
                   integer=True, input_bits=8, readout="spikes")


def test_small_network_fits():
    net = dense_net([784, 512, 512, 10])
    fit = require_fit(net)
    assert fit.fits and fit.chips == 1
    fc1 = fit.layers[0]
    assert (fc1.neurons, fc1.synapses, fc1.fan_in_max, fc1.fan_out_max) == (512, 784 * 512, 784, 512)
    assert fc1.synaptic_memory_bits == 784 * 512 * LOIHI2.weight_bits
    # 784 synapses · 8 bits per neuron: ⌊1048576 / 6272⌋ = 167 neurons per core -> ⌈512/167⌉ = 4 cores
    assert fc1.cores == math.ceil(512 / (LOIHI2.synaptic_memory_bits_per_core // (784 * 8))) == 4
    assert fc1.limited_by == "synaptic memory per core"
    assert fit.layers[2].cores == 1
    d = fit.to_dict()
    assert d["fits"] and d["limits"]["neurons_per_core"] == 8192 and "conv" in d["model"]


def test_fan_in_beyond_one_core_is_an_error_naming_layer_and_number():
    net = dense_net([5000, 4, 2])
    fit = check_fit(net)
    assert not fit.fits and not fit.layers[0].fits and fit.layers[1].fits
    with pytest.raises(ResourceError) as info:
        require_fit(net)
    msg = str(info.value)
    assert "fc1" in msg and "5000" in msg and str(LOIHI2.max_fan_in_per_core) in msg
    assert isinstance(info.value, ToolkitError)


def test_fan_in_beyond_synaptic_memory():
    spec = dataclasses.replace(LOIHI2, synaptic_memory_bits_per_core=8 * 100)
    with pytest.raises(ResourceError, match=r"fc1: one neuron's fan-in of 101 synapses needs 808 bits"):
        require_fit(dense_net([101, 3]), spec)
    assert require_fit(dense_net([100, 3]), spec).layers[0].cores == 3   # one neuron per core


def test_too_many_neurons_for_the_stated_limits():
    spec = dataclasses.replace(LOIHI2, neurons_per_core=4, cores_per_chip=2)
    net = dense_net([3, 10, 5])
    fit = check_fit(net, spec)
    assert [la.cores for la in fit.layers] == [3, 2]
    assert fit.cores == 5 and fit.chips == 3 and fit.fits           # any number of chips
    with pytest.raises(ResourceError, match=r"needs 3 chips \(5 cores, 15 neurons"):
        require_fit(net, spec, max_chips=1)
    chip_neurons = dataclasses.replace(LOIHI2, neurons_per_chip=10)
    assert check_fit(net, chip_neurons).chips == 2                   # 15 neurons > 10 per chip


def test_conv_synapse_models():
    conv = Conv(np.zeros((8, 2, 3, 3), np.int64), None, NEURON, padding=(1, 1), name="conv")
    net = Network(Input((2, 6, 6)), [conv, Flatten(),
                                      Dense(np.zeros((4, 8 * 36), np.int64), None, NEURON, name="fc")],
                  integer=True, input_bits=8, readout="spikes")
    # brute force: connected (input, output) pairs = Σ over outputs of non-padding taps
    taps_1d = np.array([2, 3, 3, 3, 3, 2])
    pairs = 8 * 2 * int(np.outer(taps_1d, taps_1d).sum())
    pairs_fit = check_fit(net)
    assert pairs_fit.layers[0].synapses == pairs and pairs_fit.layers[0].fan_in_max == 18
    shared = check_fit(net, conv_synapses="shared")
    assert shared.layers[0].synapses == conv.weight.size * shared.layers[0].cores == 144
    assert shared.conv_synapses == "shared" and "once per core" in shared.to_dict()["model"]
    with pytest.raises(ResourceError, match="conv_synapses"):
        check_fit(net, conv_synapses="dense")


def test_input_neuron_layer_is_mapped_without_synapses():
    fit = check_fit(dense_net([20, 3], input_neuron=True))
    assert [la.kind for la in fit.layers] == ["input", "dense"]
    assert fit.layers[0].synapses == 0 and fit.layers[0].cores == 1 and fit.layers[0].fan_out_max == 3


def test_potential_readout_layer_is_mapped_like_any_layer():
    from hardware.ir import readout_neuron
    net = dense_net([784, 512, 10])
    out = dataclasses.replace(net.layers[-1], neuron=readout_neuron(True))
    pot = net.replace(layers=[net.layers[0], out], readout="potential")
    plain, fit = check_fit(net).to_dict(), check_fit(pot).to_dict()
    assert [la["readout"] for la in fit["layers"]] == [False, True]
    for key in ("neurons", "synapses", "fan_in_max", "fan_out_max", "cores"):
        assert fit["layers"][1][key] == plain["layers"][1][key], key
    assert fit["layers"][1]["fan_out_max"] == 0 and fit["cores"] == plain["cores"]
