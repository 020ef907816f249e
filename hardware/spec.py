"""Every number the Loihi 2 target imposes, in one frozen object.

Sources: Lava 0.10 bit-accurate CPU models (``lava/proc/lif/models.py``
``AbstractPyLifModelFixed``/``PyLifModelBitAcc``, ``lava/proc/dense/models.py``
``AbstractPyDenseModelBitAcc``, ``lava/proc/conv/models.py``
``PyConvModelFixed``, ``lava/utils/weightutils.py``), lava-dl 0.6 netx
(``lava/lib/dl/netx/hdf5.py``: bias exponent 6, ``du = iDecay - 1``), and
for resource limits the published Loihi 2 figures (Intel, "Taking Neuromorphic
Computing to the Next Level with Loihi 2", technology brief, 2021).

Nothing else in this project writes these literals: the quantizer, the
reference simulator, the netx writer, the Lava neuron models and the tests all
read :data:`LOIHI2`.

The integer neuron update these numbers parameterise is written once, in
:mod:`hardware.fixed_point.dynamics`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loihi2Spec:
    # --- synapses ---------------------------------------------------------
    #: signed weight mantissa width used by this project's quantizer.
    weight_bits: int = 8
    #: Lava's Dense model clips weights to this many magnitude bits before
    #: truncation (``clip_weights(..., num_bits=8)``: mixed sign -> [-256, 255]).
    weight_clip_bits: int = 8
    #: weight exponent range of a synapse (``weight_exp``, signed 4 bits).
    weight_exp_min: int = -8
    weight_exp_max: int = 7
    #: Lava's fixed-point Conv clamps (wraps) its output to this many bits.
    conv_output_bits: int = 24
    #: Lava's Conv computes in float32: integer partial sums are exact only
    #: below 2**24.
    conv_float_exact_bits: int = 24
    #: largest synaptic delay (steps beyond the one every synapse adds) of Loihi 2's
    #: delayed synapses: 6 bits (Lava's ``PyDelaySparseModelBitAcc`` refuses more); bounds
    #: the extra delay of a residual network's extra input (``ir.Network.extra_delay``).
    synaptic_delay_max: int = 63

    # --- neuron state ------------------------------------------------------
    #: u and v are 24-bit signed registers.
    state_bits: int = 24
    #: synaptic input is left-shifted by 6 before it is added to u.
    activation_shift: int = 6
    #: the threshold mantissa is left-shifted by 6 to MSB-align it with v.
    threshold_shift: int = 6
    #: unsigned threshold mantissa width (0 .. 131071).
    threshold_mantissa_bits: int = 17
    #: decays are 12-bit fractions of 4096.
    decay_bits: int = 12
    #: Loihi adds this 1-bit offset to du (so a current can decay fully).
    current_decay_offset: int = 1
    voltage_decay_offset: int = 0
    #: signed bias mantissa width (-4096 .. 4095).
    bias_mantissa_bits: int = 13
    #: netx always loads biases with this exponent (``bias_exp: 6``).
    netx_bias_exp: int = 6
    #: Lava's LIF takes an unsigned 3-bit bias exponent (0 .. 7); netx always uses 6.
    bias_exp_bits: int = 3

    # --- messages ----------------------------------------------------------
    #: Lava's fixed-point Dense accumulator, the a_out -> a_in channel and the
    #: LIF arithmetic all live in int32 containers. Established by experiment
    #: (tests/test_simulator.py): values beyond the declared 16-bit precision of
    #: Dense.a_out / LIF.a_in are neither clipped nor wrapped at 16 bits; they
    #: pass through and wrap only at 32 bits (graded W @ s, a << 6, u + a).
    container_bits: int = 32
    #: payload bits of a graded spike on Loihi 2.
    graded_spike_max_bits: int = 24
    #: default bits of the analog input, sent as graded spikes every step.
    input_bits_default: int = 8

    # --- resources ------------------------------------------------------------
    # Loihi 2 public figures (Intel, "Taking Neuromorphic Computing to the Next
    # Level with Loihi 2", technology brief, 2021): 128 neuro-cores per chip,
    # up to 8192 neurons per core, up to 1M neurons and 120M synapses per chip.
    # Intel has published no per-core synaptic-memory or fan-in figure for
    # Loihi 2 that could be confirmed here; the two per-core memory/fan-in
    # limits below are Loihi 1 figures (Davies et al., IEEE Micro 2018:
    # 16 MB synaptic memory over 128 cores; nengo-loihi ``block.py``:
    # MAX_SYNAPSE_BITS = 1048576, MAX_IN_AXONS = 4096), used as conservative
    # bounds. Press coverage of Loihi 2 also reports 128 KB of SRAM per core,
    # flexibly partitioned between synapses and neuron state (not an Intel
    # primary source). Override with ``dataclasses.replace(LOIHI2, ...)``.
    neurons_per_core: int = 8192
    cores_per_chip: int = 128
    neurons_per_chip: int = 1_000_000
    synapses_per_chip: int = 120_000_000
    #: synaptic memory per neuro-core, in bits (128 KiB; Loihi 1 figure, see above).
    synaptic_memory_bits_per_core: int = 128 * 1024 * 8
    #: distinct input axons (presynaptic sources) one core accepts; bounds the
    #: fan-in of any single neuron (Loihi 1 figure, see above).
    max_fan_in_per_core: int = 4096

    # --- derived ranges -------------------------------------------------------
    @property
    def weight_min(self) -> int:
        return -(1 << (self.weight_bits - 1))

    @property
    def weight_max(self) -> int:
        return (1 << (self.weight_bits - 1)) - 1

    @property
    def state_max(self) -> int:
        """2**23: Lava wraps u when it exceeds this and clips v to ±(2**23 − 1)."""
        return 1 << (self.state_bits - 1)

    @property
    def state_abs_max(self) -> int:
        """2**23 − 1: the largest |u| that does not wrap and |v| that is not clipped; the
        quantizer keeps both within it at every step up to the T it quantizes for."""
        return self.state_max - 1

    @property
    def threshold_max(self) -> int:
        return (1 << self.threshold_mantissa_bits) - 1

    @property
    def decay_unity(self) -> int:
        return 1 << self.decay_bits

    @property
    def decay_max(self) -> int:
        return (1 << self.decay_bits) - 1

    @property
    def bias_min(self) -> int:
        return -(1 << (self.bias_mantissa_bits - 1))

    @property
    def bias_max(self) -> int:
        return (1 << (self.bias_mantissa_bits - 1)) - 1

    @property
    def bias_exp_max(self) -> int:
        return (1 << self.bias_exp_bits) - 1

    @property
    def activation_max(self) -> int:
        """Largest |synaptic input| per step whose << 6 still fits in u."""
        return (self.state_max >> self.activation_shift) - 1

    @property
    def weight_clip_min(self) -> int:
        """Lava's bit-accurate Dense clips mixed-sign weights to [-2**8, 2**8 - 1]
        (``clip_weights``): the widest weight a netx file can bring into Lava."""
        return -(1 << self.weight_clip_bits)

    @property
    def weight_clip_max(self) -> int:
        return (1 << self.weight_clip_bits) - 1

    @property
    def netx_threshold_max(self) -> int:
        """netx's default dense neuron (no ``neuron`` group) has vThMant ``1 << 17``,
        one beyond the mantissa: ``<< 6`` it is 2**23, which v never exceeds."""
        return 1 << self.threshold_mantissa_bits

    @property
    def netx_du_min(self) -> int:
        """netx reads ``du = iDecay - 1``; a file's iDecay 0 (no current decay) is du = -1."""
        return -self.current_decay_offset

    @property
    def netx_dv_max(self) -> int:
        """A file's vDecay may be 4096 (the voltage decays fully every step)."""
        return self.decay_unity

    def input_max(self, bits: int) -> int:
        """Largest unsigned graded-spike payload with ``bits`` bits."""
        return (1 << bits) - 1

    #: IF neuron: the current does not persist (du = 4095 -> decays by 4096/4096)
    #: and the voltage does not leak (dv = 0).
    @property
    def if_du(self) -> int:
        return self.decay_max

    @property
    def if_dv(self) -> int:
        return 0


LOIHI2 = Loihi2Spec()
