"""Quantizer properties: mantissas in range, integers, error at most half a step."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hardware.errors import LoihiRangeError, QuantizationError
from hardware.ir import Conv, Dense, Flatten, Input, Network, Neuron, readout_neuron
from hardware.fixed_point.quantize import quantize
from hardware.spec import LOIHI2
from tests.property_profiles import examples

finite = st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False, width=64)


def _net(w1, b1, w2, theta1, theta2, kind="if_soft"):
    n_in = w1.shape[1]
    layers = [Dense(weight=w1, bias=b1, neuron=Neuron(kind, theta1), name="d0"),
              Dense(weight=w2, bias=np.zeros(w2.shape[0]), neuron=Neuron(kind, theta2), name="d1")]
    return Network(input=Input(shape=(n_in,)), layers=layers, readout="spikes")


@settings(max_examples=examples(60), deadline=None)
@given(w1=arrays(np.float64, (5, 7), elements=finite), b1=arrays(np.float64, (5,), elements=finite),
       w2=arrays(np.float64, (3, 5), elements=finite),
       theta1=st.floats(0.05, 20.0), theta2=st.floats(0.05, 20.0), bits=st.integers(1, 12))
def test_quantizer_properties(w1, b1, w2, theta1, theta2, bits):
    if not np.any(w1) or not np.any(w2):
        return
    net = _net(w1, b1, w2, theta1, theta2)
    # Must succeed: with |W|, |b| <= 4, θ <= 20 and at most 7 inputs every limit allows a
    # scale of at least 127 / 4 (weight range), so θ >= 0.05 maps to a mantissa >= 2.
    q = quantize(net, input_bits=bits)
    assert q.integer and q.input_bits == bits
    x_max = [LOIHI2.input_max(bits), 1]
    for layer, float_layer, rep, xm in zip(q.layers, net.layers, q.metadata["quantization"], x_max):
        assert layer.weight.dtype.kind == "i" and layer.bias.dtype.kind == "i"
        assert isinstance(layer.neuron.threshold, int)
        assert LOIHI2.weight_min <= layer.weight.min() and layer.weight.max() <= LOIHI2.weight_max
        assert LOIHI2.bias_min <= layer.bias.min() and layer.bias.max() <= LOIHI2.bias_max
        assert 1 <= layer.neuron.threshold <= LOIHI2.threshold_max
        s = rep["scale"]
        # error at most half a step of the chosen scale
        w_float = float_layer.weight / xm
        assert np.all(np.abs(layer.weight / s - w_float) <= 0.5 / s * (1 + 1e-9))
        assert abs(layer.neuron.threshold / s - float_layer.neuron.threshold) <= 0.5 / s * (1 + 1e-9)
        assert np.all(np.abs(layer.bias / s - float_layer.bias) <= 0.5 / s * (1 + 1e-9))
        # the weight range is used fully unless another limit binds
        if rep["limited_by"] == "weight range":
            assert np.abs(layer.weight).max() == LOIHI2.weight_max
        # no overflow of the 24-bit state in one step
        worst = max(np.clip(layer.weight, 0, None).sum(1).max(), np.clip(-layer.weight, 0, None).sum(1).max()) * xm
        assert worst + layer.neuron.threshold + np.abs(layer.bias).max() <= LOIHI2.activation_max


def test_first_layer_scale_accounts_for_graded_input():
    w = np.array([[0.5, -0.25]])
    net = _net(w, np.zeros(1), np.ones((1, 1)), 1.0, 1.0)
    q = quantize(net, input_bits=8)
    rep = q.metadata["quantization"][0]
    # input x in [0,1] arrives as round(255·x): integer weight ≈ s·w/255
    np.testing.assert_allclose(q.layers[0].weight / rep["scale"] * 255, w, atol=0.5 / rep["scale"] * 255)


def test_large_fan_in_is_limited_by_the_state_width():
    w = np.full((2, 4000), 1.0)
    net = _net(w, np.zeros(2), np.ones((1, 2)), 1.0, 1.0)
    q = quantize(net, input_bits=8)
    assert q.metadata["quantization"][0]["limited_by"] == "24-bit state"
    assert q.metadata["quantization"][0]["worst_case_input"] <= LOIHI2.activation_max


def test_conv_and_flatten_are_kept():
    rng = np.random.default_rng(0)
    layers = [Conv(weight=rng.normal(size=(4, 1, 3, 3)), bias=rng.normal(size=4) * 0.1,
                   neuron=Neuron("cuba", 1.0), padding=(1, 1), name="c0"),
              Flatten(), Dense(weight=rng.normal(size=(3, 64)), bias=np.zeros(3), neuron=Neuron("cuba", 2.0))]
    q = quantize(Network(input=Input(shape=(1, 4, 4)), layers=layers, readout="spikes"))
    assert [type(l).__name__ for l in q.layers] == ["Conv", "Flatten", "Dense"]
    assert q.layers[0].padding == (1, 1) and q.layers[0].neuron.kind == "cuba"
    assert q.input_bits == LOIHI2.input_bits_default


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_threshold_is_an_error_naming_the_layer(bad):
    net = _net(np.ones((1, 2)), np.zeros(1), np.ones((1, 1)), bad, 1.0)
    with pytest.raises(QuantizationError, match="d0"):
        quantize(net)


def test_threshold_rounding_to_zero_is_refused_naming_the_layer():
    """θ far below one weight step would become mantissa 0 (a neuron that always fires)."""
    net = _net(np.full((1, 2), 4.0), np.zeros(1), np.ones((1, 1)), 1e-6, 1.0)
    with pytest.raises(QuantizationError, match="^layer d0: threshold θ = 1e-06 rounds to mantissa 0"):
        quantize(net, input_bits=1)


def test_quantizer_output_is_checked_by_the_validator(monkeypatch):
    """A rounding bug that produced an out-of-range weight could not slip through."""
    import hardware.fixed_point.quantize as quantize_module
    real_round = quantize_module._round

    def broken_round(*args):
        w_int, b_int, vth, worst = real_round(*args)
        return w_int * 2, b_int, vth, worst  # up to 254: beyond the 8-bit mantissa

    monkeypatch.setattr(quantize_module, "_round", broken_round)
    net = _net(np.ones((1, 2)), np.zeros(1), np.ones((1, 1)), 1.0, 1.0)
    # (the u/v bound sees the doubled weights and shrinks the scale a little: 254 becomes 228)
    with pytest.raises(LoihiRangeError, match="^layer d0: weight value 2[0-9][0-9] outside \\[-128, 127\\]"):
        quantize(net, input_bits=8)


def test_input_bits_out_of_range():
    net = _net(np.ones((1, 2)), np.zeros(1), np.ones((1, 1)), 1.0, 1.0)
    with pytest.raises(QuantizationError, match="input_bits"):
        quantize(net, input_bits=LOIHI2.graded_spike_max_bits + 1)


# --------------------------------------------------------------------------- potential readout
def _readout_net(w1, w2, b2, theta1=1.0):
    layers = [Dense(weight=w1, bias=np.zeros(w1.shape[0]), neuron=Neuron("if_soft", theta1), name="d0"),
              Dense(weight=w2, bias=b2, neuron=readout_neuron(integer=False), name="out")]
    return Network(input=Input(shape=(w1.shape[1],)), layers=layers, readout="potential")


@settings(max_examples=examples(60), deadline=None)
@given(w1=arrays(np.float64, (6, 5), elements=finite), w2=arrays(np.float64, (3, 6), elements=finite),
       b2=arrays(np.float64, (3,), elements=finite), steps=st.integers(1, 64))
def test_readout_accumulation_fits_for_every_T(w1, w2, b2, steps):
    if not np.any(w1) or not np.any(w2):
        return
    try:
        q = quantize(_readout_net(w1, w2, b2), input_bits=8, readout_steps=steps)
    except QuantizationError as exc:
        assert "fewer than" in str(exc) or "rounds to mantissa" in str(exc) or "no finite scale" in str(exc)
        return
    out = q.layers[-1]
    assert q.readout == "potential" and out.neuron == readout_neuron(integer=True)
    worst = max(np.clip(out.weight, 0, None).sum(1).max(), np.clip(-out.weight, 0, None).sum(1).max())
    # binary spikes in: |v[T]| <= T·(worst + |b|) mantissa units stays at or below the threshold
    assert steps * (worst + np.abs(out.bias).max()) <= LOIHI2.threshold_max
    assert (LOIHI2.threshold_max << LOIHI2.threshold_shift) < LOIHI2.state_max
    assert q.metadata["quantization"][-1]["readout_steps"] == steps


def test_readout_scale_escapes_a_rounding_plateau_one_unit_over_the_limit():
    """Regression (resnet-small, seed 1, epoch 12): at the first scale the rounded total was
    131,072, one unit over Loihi's 131,071, and a shrink proportional to 131,071 / 131,072
    moved no weight's rounding in 50 retries. Built here exactly: at scale 1 the mantissas
    100.25 round down and 100.75 round up, 4 more of the latter, so the sum is 1 over."""
    row = np.array([100.25] * 650 + [100.75] * 654 + [18.0])
    assert row.sum() == LOIHI2.threshold_max
    assert np.rint(row).sum() == LOIHI2.threshold_max + 1
    net = _readout_net(np.ones((row.size, 2)), row[None, :], np.zeros(1))
    out = quantize(net, input_bits=8, readout_steps=1).layers[-1]
    assert 0.99 * LOIHI2.threshold_max <= np.abs(out.weight).sum() <= LOIHI2.threshold_max


def test_readout_quantizer_refuses_what_cannot_fit():
    rng = np.random.default_rng(0)
    # a hidden layer with small positive weights (Σ < θ per step): its v is bounded for any T,
    # so it is the readout that cannot fit 100,000 steps
    w1 = np.abs(rng.normal(size=(64, 5))) * 0.1
    net = _readout_net(w1, rng.normal(size=(3, 64)), np.zeros(3))
    with pytest.raises(QuantizationError, match="T up to 100000"):
        quantize(net, input_bits=8, readout_steps=100_000)
    with pytest.raises(QuantizationError, match="readout_steps"):
        quantize(net, input_bits=8)
