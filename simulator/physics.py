"""Plausible physics of one Bitaxe: hashrate, hardware errors, power, temperatures, fan and overheat."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from bridge.boards import BoardSpec

# --- Calibration (see docs/simulator.md) ---------------------------------------------------------
# Dynamic ASIC power per chip: P = K_DYN · V² · f (V in volts, f in MHz), calibrated on stock configs:
# Gamma 525@1150 ≈ 16.5 W, Ultra 485@1200 ≈ 12 W, Supra 490@1166 ≈ 11.5 W, Max 425@1400 ≈ 13 W.
K_DYN: dict[str, float] = {"BM1370": 0.02016, "BM1366": 0.0136, "BM1368": 0.01351, "BM1397": 0.01261}
# Extra core voltage (mV) needed per MHz above stock; BM1397 boards ship with a large voltage margin.
V_SLOPE: dict[str, float] = {"BM1370": 1.0, "BM1366": 1.0, "BM1368": 1.0, "BM1397": 0.7}
ERR_WIDTH_MV = 20.0  # logistic width of the error-rate rise
STOCK_MARGIN_MV = 6 * ERR_WIDTH_MV  # stock configs sit 120 mV above the needed voltage: ~0.25 % errors
ERR_FLOOR = 0.001  # 0.1 % errors even with plenty of voltage
ERR_MAX = 0.95  # far below the needed voltage almost every nonce is wrong
ERR_TEMP_MV_PER_C = 0.5  # a hotter die needs more voltage
LEAKAGE_PER_C = 0.004  # dynamic power rises 0.4 %/°C above 60 °C (leakage)
TAU_CHIP = 90.0  # s, heatsink thermal time constant
TAU_VR = 45.0  # s
RAMP_MHZ_PER_S = 25.0  # the firmware walks the PLL in small steps
BOOT_DELAY = 5.0  # s after (re)start before the first nonce
THROTTLE_TEMP = 75.0  # °C chip: the firmware powers the ASIC down above this
VR_THROTTLE_TEMP = 105.0  # °C VR
SAFE_TEMP = 50.0  # °C the chip must cool to before recovery
MIN_COOLING = 30.0  # s minimum safe-mode time (6 × 5 s cycles in the firmware)
ASIC_REDUCTION = 100  # the firmware lowers frequency and voltage by this much after an overheat
HASH_DRIFT_SD = 0.01  # slow AR(1) drift of the hashrate (fraction)
HASH_DRIFT_TAU = 300.0  # s
HASH_WHITE_SD = 0.03  # the firmware's ~1 s register reading is noisy
POWER_WHITE_SD = 0.006
POWER_DRIFT_SD = 0.004
DIFF1 = 2.0**32  # hashes per difficulty-1 share


def thermal_resistance(fan: float) -> float:
    """Chip-to-ambient K/W of a single-chip heatsink at fan fraction 0…1."""
    return 1.2 + 3.0 / (1.0 + 4.0 * fan)


def vr_resistance(fan: float) -> float:
    return 1.0 + 2.0 / (1.0 + 3.0 * fan)


def fan_for_resistance(r: float) -> float:
    """Inverse of thermal_resistance; >1 when even a full fan is not enough."""
    if r <= 1.2:
        return 2.0
    return (3.0 / (r - 1.2) - 1.0) / 4.0


@dataclass(frozen=True)
class Truth:
    """Steady-state expected values of one clock config (at ambient, auto fan)."""

    frequency: float
    core_voltage: int
    hashrate: float  # GH/s, mean including error losses
    power: float  # W
    j_per_th: float
    gh_per_w: float
    error_pct: float
    chip_temp: float
    vr_temp: float
    fan_pct: float = 0.0
    expected_hashrate: float = 0.0  # GH/s, the firmware's frequency × cores × chips / 1000
    overheats: bool = False  # even a full fan cannot keep it below the firmware's limits: not sustainable


@dataclass(frozen=True)
class Sample:
    """One instantaneous noisy reading, in firmware units (GH/s, W, °C, %, mV, mA, MHz, s)."""

    frequency: float
    core_voltage: int
    actual_frequency: float
    core_voltage_actual: float
    hashrate: float
    hashrate_1m: float
    hashrate_10m: float
    hashrate_1h: float
    hashrate_shares: float  # what pre-2.11 firmware reported: a share-derived, smoothed estimate
    expected_hashrate: float
    power: float
    chip_temp: float
    chip_temp2: float  # -1 on boards with one sensor (the firmware's "invalid" value)
    vr_temp: float
    fan_pct: float
    fan_rpm: float
    fan2_rpm: float
    error_pct: float
    input_voltage_mv: float
    input_current_ma: float
    uptime: float
    shares_accepted: int
    shares_rejected: int
    best_diff: float
    best_session_diff: float
    overheat_mode: bool  # safe mode after an overheat (ASIC powered down)
    hashing: bool
    autofan: bool
    temp_target: float
    manual_fan_pct: float
    chip_hashrates: tuple[float, ...]
    chip_errors: tuple[int, ...]


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    # Knuth; lam is small here (shares in a few seconds)
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class MinerModel:
    """One simulated miner. Advance it with step(dt); read it with sample(); ask truth() for ground truth.

    Like the firmware, set_clock() applies any value live with no range check.
    """

    def __init__(self, board: BoardSpec, seed: int = 0, ambient: float = 25.0, quality: float = 1.0) -> None:
        self.board = board
        self.seed = seed
        self.ambient = ambient
        self.quality = quality
        self.rng = random.Random(seed)
        chips = board.asic_count
        self._k_dyn = K_DYN[board.asic_model] * self.rng.gauss(1.0, 0.02)
        # Silicon lottery: this miner's chips need a bit more or less voltage than the average one.
        self._v_offset = self.rng.gauss(0.0, 8.0) - (quality - 1.0) * 60.0
        self._v_slope = V_SLOPE[board.asic_model]
        self._v_stock_need = board.default_voltage - STOCK_MARGIN_MV
        self._static = 2.0 + 0.5 * chips + (1.0 if board.nominal_voltage > 6 else 0.0)
        self._r_scale = 1.0 / chips**0.8  # bigger boards spread heat over more heatsink
        weights = [self.rng.gauss(1.0, 0.03) for _ in range(chips)]
        total = sum(weights)
        self._chip_share = tuple(w / total for w in weights)
        self.min_fan = 0.25 if chips == 1 else 0.35
        self._rpm_max = self.rng.gauss(5200.0, 150.0)
        self._input_nominal = board.nominal_voltage * 1000.0 * (1.03 if board.nominal_voltage < 6 else 1.004)

        # configuration (NVS)
        self.frequency: float = float(board.default_frequency)
        self.core_voltage: int = int(board.default_voltage)
        self.autofan = True
        self.manual_fan_pct = 100.0
        self.temp_target = 60.0

        # state
        self.time = 0.0  # model seconds since creation
        self.uptime = 0.0
        self.actual_frequency = 0.0
        self.chip_temp = ambient + 5.0
        self.vr_temp = ambient + 5.0
        self.fan = 1.0
        self.overheat = False  # in safe mode: ASIC powered down until cooled
        self.overheat_mode = False
        self._overheat_since = 0.0
        self.power_off = False  # ASIC held in reset (overheat)
        self.hashing = True  # False: the API answers but the ASIC does not hash (only a restart recovers)
        self.shares_accepted = 0
        self.shares_rejected = 0
        self.best_diff = 0.0
        self.best_session_diff = 0.0
        self.pool_difficulty = 1000.0
        self.chip_errors = [0] * chips
        self.overheat_count = 0
        self._drift = 0.0
        self._pdrift = 0.0
        self._ema = {60.0: 0.0, 600.0: 0.0, 3600.0: 0.0}
        self._share_frac = 0.0

    # --- configuration --------------------------------------------------------------------------
    def set_clock(self, frequency: float | None = None, core_voltage: int | None = None) -> None:
        """Apply live, no range check (like the firmware): the frequency ramps there over a few seconds."""
        if frequency is not None:
            self.frequency = float(frequency)
        if core_voltage is not None:
            self.core_voltage = int(core_voltage)

    def set_fan(self, auto: bool, manual_pct: float | None = None) -> None:
        self.autofan = auto
        if manual_pct is not None:
            self.manual_fan_pct = max(0.0, min(100.0, float(manual_pct)))

    def restart(self) -> None:
        """A reboot: counters, session best and averaging windows reset; a stuck ASIC recovers."""
        self.uptime = 0.0
        self.actual_frequency = 0.0
        self.shares_accepted = self.shares_rejected = 0
        self.best_session_diff = 0.0
        self.chip_errors = [0] * self.board.asic_count
        self._ema = dict.fromkeys(self._ema, 0.0)
        self.hashing = True
        self.overheat = self.power_off = False

    def warm_start(self, uptime: float = 3600.0) -> None:
        """Jump to the steady state of the current config after `uptime` seconds of mining (cheap)."""
        t = self.truth()
        self.actual_frequency = self.frequency
        if self.autofan:
            self.chip_temp, self.vr_temp, self.fan = t.chip_temp, t.vr_temp, t.fan_pct / 100.0
        else:
            self.fan = self.manual_fan_pct / 100.0
            self.chip_temp = self._chip_temp_ss(t.power, self.fan)
            self.vr_temp = self._vr_temp_ss(t.power, self.fan)
        self.uptime = uptime
        self.time = max(self.time, uptime)
        self._ema = dict.fromkeys(self._ema, t.hashrate)
        n = _poisson(self.rng, t.hashrate * 1e9 * uptime / (self.pool_difficulty * DIFF1))
        rej = min(n, _poisson(self.rng, n * (0.002 + t.error_pct / 200.0)))
        self.shares_accepted, self.shares_rejected = n - rej, rej
        if n:
            best = self.pool_difficulty / max(1e-300, 1.0 - self.rng.random() ** (1.0 / n))
            self.best_session_diff = best
            self.best_diff = max(self.best_diff, best)

    def stall(self) -> None:
        """Enter the known bad state: API fine, ASIC not hashing, VR output 0, power still drawn."""
        self.hashing = False

    # --- physics --------------------------------------------------------------------------------
    @property
    def expected_hashrate(self) -> float:
        return self.frequency * self.board.small_core_count * self.board.asic_count / 1000.0

    def v_needed(self, frequency: float) -> float:
        """Core voltage (mV) this miner's chips need at a frequency, at 60 °C."""
        above = frequency - self.board.default_frequency
        return self._v_stock_need + self._v_slope * above + self._v_offset

    def error_rate(self, frequency: float, core_voltage: float, chip_temp: float = 60.0) -> float:
        """Hardware error fraction (0…ERR_MAX): a logistic rise as the voltage margin shrinks."""
        if frequency <= 0:
            return 0.0
        margin = core_voltage - self.v_needed(frequency) - ERR_TEMP_MV_PER_C * (chip_temp - 60.0)
        x = -margin / ERR_WIDTH_MV
        logistic = 1.0 / (1.0 + math.exp(-x)) if x > -50 else 0.0
        return min(ERR_MAX, ERR_FLOOR + logistic)

    def power_at(self, frequency: float, core_voltage: float, chip_temp: float) -> float:
        v = core_voltage / 1000.0
        dyn = self._k_dyn * v * v * max(frequency, 0.0) * self.board.asic_count
        return self._static + dyn * (1.0 + LEAKAGE_PER_C * (chip_temp - 60.0))

    def _chip_temp_ss(self, power: float, fan: float) -> float:
        return self.ambient + power * thermal_resistance(fan) * self._r_scale

    def _vr_temp_ss(self, power: float, fan: float) -> float:
        return self.ambient + power * vr_resistance(fan) * self._r_scale

    def _auto_fan_target(self, power: float) -> float:
        """Fan fraction the controller settles at: what holds the temp target at this power."""
        rise = self.temp_target - self.ambient
        if power <= 0 or rise <= 0:
            return 1.0
        needed = fan_for_resistance(rise / (power * self._r_scale))
        return min(1.0, max(self.min_fan, needed))

    def truth(self, frequency: float | None = None, core_voltage: int | None = None,
              fan_pct: float | None = None) -> Truth:
        """Ground truth (long-run means) of a config at this miner's ambient with the auto fan
        (or a fixed fan_pct, like a manual fan)."""
        f = self.frequency if frequency is None else float(frequency)
        v = self.core_voltage if core_voltage is None else int(core_voltage)
        temp = self.temp_target
        fan = 1.0
        for _ in range(50):  # fixed point: leakage depends on temperature, temperature on power
            power = self.power_at(f, v, temp)
            fan = self._auto_fan_target(power) if fan_pct is None else max(0.0, min(1.0, fan_pct / 100.0))
            new = self._chip_temp_ss(power, fan)
            if abs(new - temp) < 1e-6:
                break
            temp = new
        power = self.power_at(f, v, temp)
        err = self.error_rate(f, v, temp)
        expected = f * self.board.small_core_count * self.board.asic_count / 1000.0
        hashrate = expected * (1.0 - err)
        return Truth(
            frequency=f,
            core_voltage=v,
            hashrate=hashrate,
            power=power,
            j_per_th=power / (hashrate / 1000.0) if hashrate > 0 else math.inf,
            gh_per_w=hashrate / power if power > 0 else 0.0,
            error_pct=err * 100.0,
            chip_temp=temp,
            vr_temp=self._vr_temp_ss(power, fan),
            fan_pct=fan * 100.0,
            expected_hashrate=expected,
            overheats=temp > THROTTLE_TEMP or self._vr_temp_ss(power, fan) > VR_THROTTLE_TEMP,
        )

    def _mean_state(self) -> tuple[float, float, float]:
        """(mean hashrate GH/s, power W, error fraction) right now, before reading noise."""
        if self.power_off:
            return 0.0, self._static * 0.7, 0.0
        f = self.actual_frequency
        v = float(self.core_voltage)
        power = self.power_at(f, v, self.chip_temp)
        if not self.hashing:
            # VR output is off but the board, and the stuck ASIC's I/O, still draw power
            return 0.0, self._static * 1.2, 0.0
        if self.uptime < BOOT_DELAY:
            return 0.0, power, 0.0
        err = self.error_rate(f, v, self.chip_temp)
        return f * self.board.small_core_count * self.board.asic_count / 1000.0 * (1.0 - err), power, err

    def step(self, dt: float) -> None:
        """Advance dt model seconds; exact exponential updates in sub-steps of at most ~2 s."""
        if dt <= 0:
            return
        n = max(1, min(200, math.ceil(dt / 2.0)))
        h = dt / n
        for _ in range(n):
            self._substep(h)

    def _substep(self, h: float) -> None:
        self.time += h
        self.uptime += h
        rng = self.rng
        # frequency ramp (the firmware walks the PLL in small steps)
        target_f = 0.0 if (self.power_off or not self.hashing) else self.frequency
        if self.actual_frequency != target_f:
            delta = target_f - self.actual_frequency
            stepf = RAMP_MHZ_PER_S * h
            if abs(delta) <= stepf:
                self.actual_frequency = target_f
            else:
                self.actual_frequency += math.copysign(stepf, delta)
        hashrate, power, err = self._mean_state()
        # fan: auto settles at the fan that holds the target, with proportional action on the error
        if self.overheat:
            fan = 1.0
        elif self.autofan:
            fan = self._auto_fan_target(power) + 0.03 * (self.chip_temp - self.temp_target)
        else:
            fan = self.manual_fan_pct / 100.0
        self.fan = min(1.0, max(0.0 if not self.autofan else self.min_fan, fan))
        # first-order thermal lag toward the steady state at this power and fan
        t_ss, vr_ss = self._chip_temp_ss(power, self.fan), self._vr_temp_ss(power, self.fan)
        self.chip_temp = t_ss + (self.chip_temp - t_ss) * math.exp(-h / TAU_CHIP)
        self.vr_temp = vr_ss + (self.vr_temp - vr_ss) * math.exp(-h / TAU_VR)
        # slow drifts, AR(1) exact for any h
        r = math.exp(-h / HASH_DRIFT_TAU)
        s = math.sqrt(1.0 - r * r)
        self._drift = self._drift * r + HASH_DRIFT_SD * s * rng.gauss(0.0, 1.0)
        self._pdrift = self._pdrift * r + POWER_DRIFT_SD * s * rng.gauss(0.0, 1.0)
        # averaging windows like hashRate_1m/10m/1h
        reg = hashrate * (1.0 + self._drift)
        for w in self._ema:
            self._ema[w] += (1.0 - math.exp(-h / w)) * (reg - self._ema[w])
        # shares (Poisson) and best difficulty (max of n Pareto(1) draws scaled by the pool difficulty)
        if hashrate > 0:
            lam = hashrate * 1e9 * h / (self.pool_difficulty * DIFF1)
            n_sh = _poisson(rng, lam)
            if n_sh:
                rej = _poisson(rng, n_sh * (0.002 + err * 0.5))
                rej = min(rej, n_sh)
                self.shares_accepted += n_sh - rej
                self.shares_rejected += rej
                best = self.pool_difficulty / max(1e-300, 1.0 - rng.random() ** (1.0 / n_sh))
                self.best_session_diff = max(self.best_session_diff, best)
                self.best_diff = max(self.best_diff, best)
            # hardware errors per chip, as counted by the hashrate monitor (one count per ~error nonce)
            if err > 0:
                lam_e = hashrate / max(1e-9, 1.0 - err) * err * h * 1e9 / (DIFF1 * 256)
                for i, share in enumerate(self._chip_share):
                    self.chip_errors[i] += _poisson(rng, lam_e * share)
        self._check_overheat()

    def _check_overheat(self) -> None:
        if not self.overheat:
            if (self.chip_temp > THROTTLE_TEMP or self.vr_temp > VR_THROTTLE_TEMP) and (
                    self.frequency > 50 or self.core_voltage > 1000):
                # firmware: fan 100 % manual, VCORE off, ASIC held in reset, overheat_mode saved
                self.overheat = self.power_off = True
                self.overheat_mode = True
                self.overheat_count += 1
                self._overheat_since = self.time
                self.autofan = False
                self.manual_fan_pct = 100.0
                self.fan = 1.0
            return
        cooled = self.chip_temp <= SAFE_TEMP and self.vr_temp <= VR_THROTTLE_TEMP - 10
        if cooled and self.time - self._overheat_since >= MIN_COOLING:
            # recover live with both settings lowered by 100 and saved; the fan stays at manual 100 %
            v, f = self.core_voltage, self.frequency
            self.core_voltage = v - ASIC_REDUCTION if v > ASIC_REDUCTION else 1000
            self.frequency = f - ASIC_REDUCTION if f > ASIC_REDUCTION else 400.0
            self.overheat = self.power_off = False
            self.overheat_mode = False

    # --- readings -------------------------------------------------------------------------------
    def sample(self) -> Sample:
        """A noisy instantaneous reading (draws noise; does not advance time)."""
        rng = self.rng
        hashrate, power, err = self._mean_state()
        reg = max(0.0, hashrate * (1.0 + self._drift + HASH_WHITE_SD * rng.gauss(0.0, 1.0)))
        p = max(0.0, power * (1.0 + self._pdrift + POWER_WHITE_SD * rng.gauss(0.0, 1.0)))
        vin = self._input_nominal + rng.gauss(0.0, 15.0) - 0.004 * p * 1000.0 / self.board.nominal_voltage
        # input current from the input side of the regulator; the firmware's P and V·I need not agree exactly
        cur = p / (vin / 1000.0) * 1000.0 * rng.gauss(1.0, 0.005)
        if self.power_off or not self.hashing:
            vcore = 0.0
        else:
            vcore = self.core_voltage - 4.0 - 0.15 * power / self.board.asic_count + rng.gauss(0.0, 2.0)
        multi_sensor = self.board.asic_count > 1
        chip_t = self.chip_temp + rng.gauss(0.0, 0.25)
        fan_pct = round(self.fan * 100.0)
        rpm = max(0.0, self._rpm_max * self.fan**0.9 * rng.gauss(1.0, 0.01)) if self.fan > 0.02 else 0.0
        # a fraction of nonces: the noise never takes it past 100 % (the firmware's counters cannot)
        err_pct = 0.0 if hashrate <= 0 else min(100.0, max(0.0, err * 100.0 * (1.0 + 0.05 * rng.gauss(0.0, 1.0))))
        chips = tuple(reg * s for s in self._chip_share)
        # Share-derived estimate over ~10 min: Poisson noise of the shares counted in the window.
        n_win = self._ema[600.0] * 1e9 * 600.0 / (self.pool_difficulty * DIFF1)
        by_shares = self._ema[600.0] * (1.0 + rng.gauss(0.0, 1.0) / math.sqrt(n_win)) if n_win > 1 else 0.0
        return Sample(
            frequency=self.frequency,
            core_voltage=self.core_voltage,
            actual_frequency=self.actual_frequency,
            core_voltage_actual=max(0.0, vcore),
            hashrate=reg,
            hashrate_1m=self._ema[60.0],
            hashrate_10m=self._ema[600.0],
            hashrate_1h=self._ema[3600.0],
            hashrate_shares=max(0.0, by_shares),
            expected_hashrate=self.expected_hashrate,
            power=p,
            chip_temp=chip_t,
            chip_temp2=chip_t + 1.5 + rng.gauss(0.0, 0.25) if multi_sensor else -1.0,
            vr_temp=self.vr_temp + rng.gauss(0.0, 0.3),
            fan_pct=fan_pct,
            fan_rpm=round(rpm),
            fan2_rpm=round(rpm * 0.98) if multi_sensor and self.board.nominal_voltage > 6 else 0.0,
            error_pct=err_pct,
            input_voltage_mv=vin,
            input_current_ma=cur,
            uptime=self.uptime,
            shares_accepted=self.shares_accepted,
            shares_rejected=self.shares_rejected,
            best_diff=self.best_diff,
            best_session_diff=self.best_session_diff,
            overheat_mode=self.overheat_mode,
            hashing=self.hashing and not self.power_off,
            autofan=self.autofan,
            temp_target=self.temp_target,
            manual_fan_pct=self.manual_fan_pct,
            chip_hashrates=chips,
            chip_errors=tuple(self.chip_errors),
        )
