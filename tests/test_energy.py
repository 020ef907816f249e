"""Activity counts (fan-out, synaptic ops) and energy in both conventions, checked by hand."""
import numpy as np
import pytest
import torch

from hardware.analysis.activity import (ActivityError, activity_from_sim, conv_fan_in, fan_out,
                               input_fan_out, layer_activity, load_raster, save_raster)
from hardware.analysis.energy import (ENERGY_CONSTANT_NAMES, ENERGY_CONSTANTS, EnergyConfigError,
                             count_macs, energy_estimate)
from hardware.errors import ToolkitError
from hardware.ir import Conv, Dense, Flatten, Input, Network, Neuron

NEURON = Neuron("if_soft", 64)


def tiny_dense() -> Network:
    """input (2,) -> d1 (3) -> d2 (2); integer weights are irrelevant to the counts."""
    return Network(Input((2,)), [Dense(np.ones((3, 2), np.int64), None, NEURON, name="d1"),
                                 Dense(np.ones((2, 3), np.int64), None, NEURON, name="d2")],
                   integer=True, input_bits=8, readout="spikes")


def tiny_activity(batch_extra_zero: bool = False):
    net = tiny_dense()
    # T=2, B=1.  d1 spikes: t1 [1,0,1], t2 [0,1,0] (3 spikes); d2: t1 [0,0], t2 [1,0] (1 spike)
    d1 = np.array([[[1, 0, 1]], [[0, 1, 0]]])
    d2 = np.array([[[0, 0]], [[1, 0]]])
    x = np.array([[5, 0]])
    if batch_extra_zero:  # a second, silent sample with a zero input halves every mean
        d1 = np.concatenate([d1, np.zeros_like(d1)], axis=1)
        d2 = np.concatenate([d2, np.zeros_like(d2)], axis=1)
        x = np.concatenate([x, np.zeros_like(x)])
    return net, layer_activity(net, [d1, d2], x)


# Hand-computed for tiny_activity() (per sample):
#   graded input: 1 non-zero value × 2 steps = 2 messages, × fan-out 3 = 6 graded synops (d1)
#   d2 binary synops: 3 d1 spikes × fan-out 2 = 6
#   updates: d1 3·2 = 6 (3 active, 3 inactive), d2 2·2 = 4 (1 active, 3 inactive)
#   E = 6·23.6 (binary) + 6·23.6 (graded) + 4·81 + 6·52 + (3 + 1 + 2)·1.7
#     = 141.6 + 141.6 + 324 + 312 + 10.2 = 929.4 pJ
#   d1: 141.6 + 3·81 + 3·52 + (3 + 2)·1.7 = 549.1 pJ ; d2: 141.6 + 81 + 3·52 + 1.7 = 380.3 pJ
#   MACs 2·3 + 3·2 = 12: ANN fp32 12·4.6 = 55.2 pJ, int8 12·0.23 = 2.76 pJ
HAND_TOTAL = 929.4


def test_tiny_activity_counts_by_hand():
    _, act = tiny_activity()
    d = act.to_dict()
    d1, d2 = d["layers"]
    assert (d1["spikes"], d1["synops_graded"], d1["synops_binary"], d1["graded_messages"]) == (3, 6, 0, 2)
    assert (d2["spikes"], d2["synops_graded"], d2["synops_binary"]) == (1, 0, 6)
    assert d1["spikes_per_step"] == [2, 1] and d2["spikes_per_step"] == [0, 1]
    assert (d1["neuron_updates"], d1["active_updates"]) == (6, 3)
    assert d1["firing_rate"] == pytest.approx(3 / 6)
    assert (d1["fan_in_max"], d1["fan_out_max"], d2["fan_out_max"]) == (2, 2, 0)
    assert d["totals"]["synops"] == 12 and d["samples"] == 1 and d["timesteps"] == 2


def test_energy_by_hand():
    net, act = tiny_activity()
    e = energy_estimate(act, {}, count_macs(net))
    assert e["estimate"] is True and "Loihi 2" in e["caveat"]
    assert e["total_pj"] == pytest.approx(HAND_TOTAL)
    assert [la["total"] for la in e["layers"]] == pytest.approx([549.1, 380.3])
    ops = e["by_operation"]
    assert ops["synaptic_binary"] == pytest.approx(141.6)
    assert ops["synaptic_graded"] == pytest.approx(141.6)
    assert ops["neuron_update_active"] == pytest.approx(324.0)
    assert ops["neuron_update_inactive"] == pytest.approx(312.0)
    assert ops["spike_routing"] == pytest.approx(10.2)
    assert e["ann_baseline"]["macs"] == 12
    assert e["ann_baseline"]["fp32_pj"] == pytest.approx(55.2)
    assert e["ann_baseline"]["int8_pj"] == pytest.approx(2.76)
    assert e["reference"]["energy_per_inference_mj"] == 1.66


def test_energy_is_a_mean_per_sample_and_accepts_the_dict_form():
    net, act = tiny_activity(batch_extra_zero=True)
    e = energy_estimate(act.to_dict(), {}, count_macs(net))
    # the silent sample still pays 10 inactive updates (10·52 pJ)
    assert e["total_pj"] == pytest.approx((HAND_TOTAL + 10 * 52) / 2)


def test_override_changes_result_as_expected():
    net, act = tiny_activity()
    e = energy_estimate(act, {"synop_pj": 10.0, "ann_mac_int8_pj": 1.0}, count_macs(net))
    assert e["total_pj"] == pytest.approx(HAND_TOTAL - 141.6 + 6 * 10.0)
    assert e["ann_baseline"]["int8_pj"] == pytest.approx(12.0)
    flags = {c["name"]: c["overridden"] for c in e["constants"]}
    assert flags["synop_pj"] and not flags["spike_pj"]


def test_static_energy_needs_power_step_time_and_steps():
    _, act = tiny_activity()
    both = {"static_power_w": 0.5, "step_time_s": 2e-6}
    e = energy_estimate(act, both, steps_per_sample=7)
    # 0.5 W × 2 µs × 7 steps = 7 µJ = 7e6 pJ, on top of the dynamic hand total
    assert e["by_operation"]["static"] == pytest.approx(0.5 * 2e-6 * 7 * 1e12)
    assert e["total_pj"] == pytest.approx(HAND_TOTAL + 7e6)
    assert e["static_included"] is True and "included" in e["static_note"]
    assert e["steps_per_sample"] == 7 and "ann_baseline" not in e
    # doubling the steps doubles the static term only
    assert energy_estimate(act, both, steps_per_sample=14)["total_pj"] == \
        pytest.approx(HAND_TOTAL + 14e6)
    for overrides, steps, missing in [({"static_power_w": 0.5}, 7, "energy.step_time_s"),
                                      ({"step_time_s": 2e-6}, 7, "energy.static_power_w"),
                                      ({}, 7, "energy.static_power_w and energy.step_time_s"),
                                      (both, None, "steps per sample")]:
        off = energy_estimate(act, overrides, steps_per_sample=steps)
        assert off["total_pj"] == pytest.approx(HAND_TOTAL)
        assert "static" not in off["by_operation"] and off["static_included"] is False
        assert off["static_note"].startswith("static energy not included") and \
            missing in off["static_note"], off["static_note"]


def test_static_overrides_through_the_config_reach_the_estimate(tmp_path):
    from pipeline.config import load_config

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("energy:\n  static_power_w: 0.25\n  step_time_s: 1.0e-5\n")
    cfg = load_config(cfg_path, ["eval.timesteps=8"])
    _, act = tiny_activity()
    e = energy_estimate(act, dict(cfg.energy), steps_per_sample=cfg.eval.timesteps)
    assert e["total_pj"] - HAND_TOTAL == pytest.approx(0.25 * 1e-5 * 8 * 1e12)
    flags = {c["name"]: c["overridden"] for c in e["constants"]}
    assert flags["static_power_w"] and flags["step_time_s"] and not flags["synop_pj"]


@pytest.mark.parametrize("overrides, key", [({"synop_pjj": 1.0}, "energy.synop_pjj"),
                                            ({"spike_pj": 0.0}, "energy.spike_pj"),
                                            ({"spike_pj": -2.0}, "energy.spike_pj"),
                                            ({"spike_pj": float("nan")}, "energy.spike_pj"),
                                            ({"spike_pj": "big"}, "energy.spike_pj")])
def test_bad_override_names_the_key(overrides, key):
    _, act = tiny_activity()
    with pytest.raises(EnergyConfigError) as info:
        energy_estimate(act, overrides)
    assert key in str(info.value)
    assert isinstance(info.value, ToolkitError)


def test_constants_table_is_sourced():
    assert len(set(ENERGY_CONSTANT_NAMES)) == len(ENERGY_CONSTANTS)
    for c in ENERGY_CONSTANTS:
        assert c.source and c.unit
    values = {c.name: c.value for c in ENERGY_CONSTANTS}
    assert (values["synop_pj"], values["neuron_update_active_pj"], values["neuron_update_inactive_pj"],
            values["spike_pj"], values["ann_mac_fp32_pj"], values["ann_mac_int8_pj"],
            values["ac_fp32_pj"]) == (23.6, 81.0, 52.0, 1.7, 4.6, 0.23, 0.9)


# Convention (b) for tiny_activity(), by hand: 6 binary synops (d2) × 0.9 pJ + 6 graded synops
# (d1, the first layer's graded input) × 4.6 pJ = 5.4 + 27.6 = 33.0 pJ; ANN 12 MACs × 4.6 = 55.2 pJ
HAND_LITERATURE_SNN, HAND_LITERATURE_ANN = 33.0, 55.2


def test_literature_convention_by_hand():
    net, act = tiny_activity()
    lit = energy_estimate(act, {}, count_macs(net))["literature"]
    assert (lit["synops_binary"], lit["synops_graded"], lit["e_ac_pj"], lit["e_mac_pj"]) == \
        (6, 6, 0.9, 4.6)
    assert lit["snn_pj"] == pytest.approx(6 * 0.9 + 6 * 4.6) == HAND_LITERATURE_SNN
    assert lit["ann_macs"] == 12 and lit["ann_pj"] == pytest.approx(12 * 4.6)
    assert lit["ann_over_snn"] == pytest.approx(HAND_LITERATURE_ANN / HAND_LITERATURE_SNN)
    assert "Horowitz" in lit["source"] and "no memory access" in lit["includes"]
    # per layer: d1 has the graded MACs, d2 the binary adds
    layers = energy_estimate(act, {}, count_macs(net))["layers"]
    assert [la["literature_pj"] for la in layers] == pytest.approx([6 * 4.6, 6 * 0.9])


def test_energy_section_carries_both_conventions_with_their_constants():
    net, act = tiny_activity()
    e = energy_estimate(act, {}, count_macs(net))
    assert e["total_pj"] == pytest.approx(HAND_TOTAL)                 # (a)
    assert e["literature"]["snn_pj"] == pytest.approx(HAND_LITERATURE_SNN)   # (b)
    assert "Loihi 1" in e["caveat"] and "neuron updates" in e["includes"]
    assert "do not compare" in e["not_comparable"]
    constants = {c["name"]: c for c in e["constants"]}
    assert constants["ac_fp32_pj"]["value"] == 0.9 and "add" in constants["ac_fp32_pj"]["source"]
    assert constants["ann_mac_fp32_pj"]["value"] == 4.6
    assert all("ISSCC 2014" in constants[n]["source"] for n in ("ac_fp32_pj", "ann_mac_fp32_pj"))
    # no MAC counts: (b) has its SNN side only, no null ANN keys
    lit = energy_estimate(act)["literature"]
    assert lit["snn_pj"] == pytest.approx(HAND_LITERATURE_SNN) and "ann_pj" not in lit


def test_literature_overrides_apply(tmp_path):
    from pipeline.config import load_config

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("energy:\n  ac_fp32_pj: 0.03\n  ann_mac_fp32_pj: 0.23\n")
    net, act = tiny_activity()
    e = energy_estimate(act, dict(load_config(cfg_path).energy), count_macs(net))
    lit = e["literature"]
    assert lit["snn_pj"] == pytest.approx(6 * 0.03 + 6 * 0.23)
    assert lit["ann_pj"] == pytest.approx(12 * 0.23) == e["ann_baseline"]["fp32_pj"]
    assert e["total_pj"] == pytest.approx(HAND_TOTAL)      # (a) does not use them
    flags = {c["name"]: c["overridden"] for c in e["constants"]}
    assert flags["ac_fp32_pj"] and flags["ann_mac_fp32_pj"] and not flags["synop_pj"]


def test_old_energy_section_without_the_new_fields_still_validates():
    from pipeline.artifacts import Energy

    net, act = tiny_activity()
    old = energy_estimate(act, {}, count_macs(net))
    for key in ("includes", "literature", "not_comparable"):
        del old[key]
    for row in old["layers"]:
        del row["literature_pj"]
    old["ann_baseline"].update(fp32_over_snn=0.06, int8_over_snn=0.003)   # keys it used to have
    section = Energy.model_validate(old)
    assert section.literature is None and section.includes is None
    assert Energy.model_validate(energy_estimate(act, {}, count_macs(net))).literature.snn_pj == \
        pytest.approx(HAND_LITERATURE_SNN)


# --------------------------------------------------------------------------- fan-out
def _brute_fan_out(layer: Conv, in_shape):
    c, h, w = in_shape
    co, oh, ow = layer.output_shape(in_shape)
    kh, kw = layer.weight.shape[2:]
    cig, cog = c // layer.groups, co // layer.groups
    cnt = np.zeros(in_shape, np.int64)
    for o in range(co):
        g = o // cog
        for oy in range(oh):
            for ox in range(ow):
                for ci in range(cig):
                    for ky in range(kh):
                        for kx in range(kw):
                            y = oy * layer.stride[0] - layer.padding[0] + ky * layer.dilation[0]
                            x = ox * layer.stride[1] - layer.padding[1] + kx * layer.dilation[1]
                            if 0 <= y < h and 0 <= x < w:
                                cnt[g * cig + ci, y, x] += 1
    return cnt


def conv_net(rng) -> Network:
    c1 = Conv(rng.integers(-5, 6, (4, 2, 3, 3)), None, NEURON, stride=(2, 1), padding=(1, 2),
              dilation=(1, 2), name="c1")
    c2 = Conv(rng.integers(-5, 6, (6, 2, 2, 2)), None, NEURON, groups=2, name="c2")
    flat = 6 * 3 * 7
    return Network(Input((2, 7, 8)), [c1, c2, Flatten(), Dense(rng.integers(-5, 6, (3, flat)),
                                                               None, NEURON, name="d")],
                   integer=True, input_bits=8, readout="spikes")


def test_conv_fan_out_brute_force(rng):
    net = conv_net(rng)
    shapes = net.shapes()
    assert np.array_equal(input_fan_out(net), _brute_fan_out(net.layers[0], (2, 7, 8)))
    fo = fan_out(net)
    assert np.array_equal(fo[0], _brute_fan_out(net.layers[1], shapes[0]))
    assert np.all(fo[1] == 3) and np.all(fo[2] == 0)          # conv -> flatten -> dense(3); output
    # every connected pair is counted once from each side
    assert fo[0].sum() == conv_fan_in(net.layers[1], shapes[0]).sum()


def test_conv_synops_of_hand_made_spike_train(rng):
    net = conv_net(rng)
    shapes = net.shapes()
    trains = [np.zeros((2, 1) + s, np.int64) for s in (shapes[0], shapes[1], shapes[3])]
    trains[0][0, 0, 0, 0, 0] = 1     # corner neuron at step 1
    trains[0][1, 0, 3, 2, 4] = 1     # an interior neuron at step 2
    trains[0][1, 0, 1, 0, 0] = 1     # channel 1 corner (other group)
    trains[1][1, 0, 5, 2, 6] = 1     # one c2 spike
    act = layer_activity(net, trains, np.zeros((1, 2, 7, 8), np.int64)).to_dict()
    fo = _brute_fan_out(net.layers[1], shapes[0])
    assert act["layers"][1]["synops_binary"] == fo[0, 0, 0] + fo[3, 2, 4] + fo[1, 0, 0]
    assert act["layers"][2]["synops_binary"] == 3
    assert act["layers"][0]["synops_graded"] == 0               # all-zero input sends nothing


def test_trains_and_counts_agree_with_simulator(rng):
    from hardware.simulator import simulate

    net = conv_net(rng)
    x = rng.integers(0, 256, (3, 2, 7, 8))
    with_trains = simulate(net, torch.as_tensor(x), 5, record_spikes=True)
    counts_only = simulate(net, torch.as_tensor(x), 5)
    a = activity_from_sim(net, with_trains, x)
    b = activity_from_sim(net, counts_only, x)
    assert a.to_dict() == b.to_dict()
    # graded synops = Σ_t Σ_i [x_i ≠ 0] · fan_out_i
    expected = 5 * int(((x != 0) * input_fan_out(net)[None]).sum())
    assert a.layers[0].synops_graded == expected
    # merging two batches equals one report over both
    halves = activity_from_sim(net, simulate(net, torch.as_tensor(x[:1]), 5), x[:1]).merge(
        activity_from_sim(net, simulate(net, torch.as_tensor(x[1:]), 5), x[1:]))
    assert halves.to_dict() == a.to_dict()


def test_activity_rejects_mismatched_spikes():
    net = tiny_dense()
    with pytest.raises(ActivityError, match="2 spiking layers"):
        layer_activity(net, [np.zeros((2, 1, 3))])
    with pytest.raises(ActivityError, match="d2"):
        layer_activity(net, [np.zeros((2, 1, 3)), np.zeros((2, 1, 5))])
    with pytest.raises(ActivityError, match="step_counts"):
        layer_activity(net, [np.zeros((1, 3)), np.zeros((1, 2))])


def test_count_macs_hand_computed():
    from hardware.ir import Conv, Dense, Flatten, Input, Network, Neuron

    conv = Conv(weight=np.ones((4, 2, 3, 3)), bias=None, neuron=Neuron("if_soft", 1.0), padding=(1, 1))
    dense = Dense(weight=np.ones((3, 100)), bias=None, neuron=Neuron("if_soft", 1.0))
    net = Network(input=Input(shape=(2, 5, 5)), layers=[conv, Flatten(), dense], readout="spikes")
    # conv: 4·5·5 outputs × (2·3·3) inputs each; dense: 100 × 3
    assert count_macs(net) == [100 * 18, 300]


def test_raster_round_trip(tmp_path):
    trains = [np.random.default_rng(0).random((4, 2, 3, 2, 2)) < 0.3, np.ones((4, 2, 5), bool)]
    path = save_raster(tmp_path / "raster.npz", ["conv", "dense"], trains, sample=1)
    raster = load_raster(path)
    assert list(raster) == ["conv", "dense"]
    assert raster["conv"].shape == (4, 12) and raster["conv"].dtype == bool
    assert np.array_equal(raster["conv"], trains[0][:, 1].reshape(4, -1))


def test_potential_readout_layer_works_but_never_spikes():
    """tiny_dense with d2 the non-firing integrator: d2 receives the same 6 binary synops and
    makes 2·2 neuron updates, all inactive; it sends nothing and has no firing rate.
    E = 6·23.6 + 6·23.6 + 3·81 + (3 + 4)·52 + (3 + 2)·1.7 = 283.2 + 243 + 364 + 8.5 = 898.7 pJ."""
    from hardware.ir import readout_neuron
    plain = tiny_dense()
    d2 = Dense(np.ones((2, 3), np.int64), None, readout_neuron(True), name="d2")
    net = plain.replace(layers=[plain.layers[0], d2], readout="potential")
    d1_spikes = np.array([[[1, 0, 1]], [[0, 1, 0]]])
    act = layer_activity(net, [d1_spikes, np.zeros((2, 1, 2), np.int64)], np.array([[5, 0]]))
    d = act.to_dict()
    first, out = d["layers"]
    assert (first["readout"], out["readout"]) == (False, True)
    assert (out["synops_binary"], out["neuron_updates"], out["active_updates"], out["spikes"]) == (6, 4, 0, 0)
    assert out["firing_rate"] is None and out["fan_out_max"] == 0
    assert first["firing_rate"] == pytest.approx(3 / 6)
    e = energy_estimate(act, {}, count_macs(net))
    assert e["total_pj"] == pytest.approx(898.7)
    row = e["layers"][1]
    assert row["spike_routing"] == 0 and row["neuron_update_active"] == 0
    assert row["synaptic_binary"] == pytest.approx(6 * 23.6)
    assert row["neuron_update_inactive"] == pytest.approx(4 * 52)
