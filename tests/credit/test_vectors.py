"""docs/algorithms.md §6 test vectors T1–T11 (T10 peers: test_peers.py), float64 at 1e-6.

The spec rounds to 6 decimals; the numbers are worked out in the comments.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from server.credit import (
    METHODS,
    CreditInputs,
    EntropyGate,
    antisd_token_signal,
    compute_credit,
    sequence_advantages,
)

F64 = torch.float64
NAN, INF = float("nan"), float("inf")
A1 = 0.5 / (math.sqrt(1 / 3) + 1e-6)  # unbiased GRPO advantage of a success in [1,0,0,1] ≈ 0.866024
OPEN = {"warmup_history": [1.0] * 5, "h_warm": 1.0, "tau_down": 0.93, "g": 1}  # gate open
# closed, and stays closed at entropy 1.0 < H_warm = 5.0
CLOSED = {"warmup_history": [5.0] * 5, "h_warm": 5.0, "tau_down": 4.65, "g": 0}


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


def close(got, want, tol=1e-6):
    got = got.tolist() if isinstance(got, torch.Tensor) else got
    assert got == pytest.approx(want, abs=tol), f"{got} != {want}"


# ---- T1, T2: GRPO / Dr.GRPO ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rewards", "std", "want"),
    [
        # T1: mean ½, unbiased std √(1/3): ±0.5/0.577351 = ±0.866024
        ([1, 0, 0, 1], "unbiased", [0.866024, -0.866024, -0.866024, 0.866024]),
        # population std ½: ±0.5/0.500001 = ±0.999998
        ([1, 0, 0, 1], "population", [0.999998, -0.999998, -0.999998, 0.999998]),
        ([1, 0, 0, 1], "none", [0.5, -0.5, -0.5, 0.5]),
        # T2: mean ¼, unbiased std ½: 0.75/0.500001 = 1.499997, −0.25/0.500001 = −0.499999
        ([1, 0, 0, 0], "unbiased", [1.499997, -0.499999, -0.499999, -0.499999]),
        ([1, 0, 0, 0], "population", [1.732047, -0.577349, -0.577349, -0.577349]),
        ([1, 1, 1, 1], "unbiased", [0.0] * 4),
        ([0, 0, 0, 0], "unbiased", [0.0] * 4),
        ([1, 1, 1, 1], "none", [0.0] * 4),
    ],
)
def test_t1_t2_grpo_one_group(rewards, std, want):
    A_B = sequence_advantages(t64(rewards), torch.zeros(4, dtype=torch.long), std)
    close(A_B, want)


def test_t2_uniform_group_is_exactly_zero():
    for r in ([1, 1, 1, 1], [0, 0, 0, 0]):
        for std in ("unbiased", "population", "none"):
            assert (
                sequence_advantages(t64(r), torch.zeros(4, dtype=torch.long), std).tolist()
                == [0.0] * 4
            )


def test_t2_size_one_groups():
    # size-1 group: mean 0, std 1 → A = r/(1+ε); Dr.GRPO: exactly r
    r_B, g_B = t64([1, 0]), torch.tensor([0, 1])
    close(sequence_advantages(r_B, g_B), [0.999999, 0.0])
    assert sequence_advantages(r_B, g_B, "none").tolist() == [1.0, 0.0]


def test_t2_two_groups():
    r_B = t64([1, 0, 0, 1, 1, 1, 0, 1])
    g_B = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    want = [0.866024, -0.866024, -0.866024, 0.866024, 0.499999, 0.499999, -1.499997, 0.499999]
    close(sequence_advantages(r_B, g_B), want)
    # ids need not be contiguous or sorted
    close(sequence_advantages(r_B, torch.tensor([9, 9, 9, 9, -4, -4, -4, -4])), want)


# ---- T3: sampled-token signals ---------------------------------------------------------------
S3 = [-1.0, -2.0, -0.5]
T3 = [-0.5, -3.0, -0.5]  # u = t − s = [0.5, −1.0, 0.0]


def one_row(s=S3, t=T3, A=None, step=0, entropy=None) -> CreditInputs:
    """One rollout in a group of four whose success advantage is A1 (rewards [1,0,0,1]), or a
    single rollout with reward A (size-1 Dr.GRPO group gives A exactly)."""
    return CreditInputs(
        mask_BT=torch.ones(1, len(s), dtype=torch.bool),
        rewards_B=t64([1.0]),
        group_ids_B=torch.tensor([0]),
        student_lp_BT=t64([s]),
        teacher_lp_BT=t64([t]),
        teacher_entropy_BT=torch.ones(1, len(s), dtype=F64) if entropy is None else entropy,
        step=step,
    )


def group_of_four(s=S3, t=T3, step=0, success=True) -> CreditInputs:
    """Rewards [1,0,0,1]: row 0 (success, A = A1) or row 1 (failure, A = −A1) carries s, t."""
    other = [[0.0] * len(s)] * 3
    rows_s = [s, *other] if success else [other[0], s, *other[1:]]
    rows_t = [t, *other] if success else [other[0], t, *other[1:]]
    return CreditInputs(
        mask_BT=torch.ones(4, len(s), dtype=torch.bool),
        rewards_B=t64([1, 0, 0, 1]),
        group_ids_B=torch.zeros(4, dtype=torch.long),
        student_lp_BT=t64(rows_s),
        teacher_lp_BT=t64(rows_t),
        teacher_entropy_BT=torch.ones(4, len(s), dtype=F64),
        step=step,
    )


@pytest.mark.parametrize("method", ["opsd", "sdpo", "hsd"])
def test_t3_u_methods(method):
    res = compute_credit(method, one_row())
    close(res.advantages_BT[0], [0.5, -1.0, 0.0])
    close(res.signal_BT[0], [0.5, -1.0, 0.0])


def test_t3_hsd_mix():
    # u + 0.5·A1 = [0.5, −1.0, 0.0] + 0.433012
    res = compute_credit("hsd", group_of_four(), {"mix": 0.5})
    close(res.advantages_BT[0], [0.933012, -0.566988, 0.433012])


def test_t3_opd():
    # diff = s − t = [−0.5, 1.0, 0.0], mean 1/6; Â = mean − diff
    close(compute_credit("opd", one_row()).advantages_BT[0], [0.666667, -0.833333, 0.166667])
    close(compute_credit("opd", one_row(), {"center": False}).advantages_BT[0], [0.5, -1.0, 0.0])
    close(
        compute_credit("opd", one_row(), {"kl_coef": 2.0}).advantages_BT[0],
        [1.333333, -1.666667, 0.333333],
    )


# ---- T4: AntiSD -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("u", "delta"),
    [
        (0.0, 0.0),  # ½(log 2 − log 2)
        (0.5, -0.140465),  # ½(0.693147 − 0.974077)
        (-1.0, 0.189943),  # ½(0.693147 − 0.313262)
        (2.0, -0.716890),  # ½(0.693147 − 2.126928)
        (-20.0, 0.346574),  # cap ½ log 2
        (10.0, -4.653449),  # ≈ −u/2 + ½ log 2
    ],
)
def test_t4_token_signal(u, delta):
    assert float(antisd_token_signal(t64(u))) == pytest.approx(delta, abs=1e-6)
    assert float(antisd_token_signal(torch.tensor(u))) == pytest.approx(delta, abs=1e-5)  # float32


def test_t4_antisd_gate_open_and_closed():
    # A1 + 0.5·δ(u), δ(u) = [−0.140465, 0.189943, 0.0]
    res = compute_credit("antisd", group_of_four(), {}, OPEN)
    assert res.gate == 1
    close(res.advantages_BT[0], [0.795791, 0.960995, 0.866024])
    for state in (CLOSED, None):  # closed, and first warm-up step
        res = compute_credit("antisd", group_of_four(), {}, state)
        assert res.gate == 0
        close(res.advantages_BT[0], [A1] * 3, 1e-12)
        assert res.signal_BT.abs().sum() == 0


# ---- T5: entropy gate -------------------------------------------------------------------------
WARM_H = [2.0, 2.2, 1.8, 2.1, 1.9]
AFTER_H = [1.9, 1.85, 1.95, 2.0, 1.7]  # τ_down = 0.93·2.0 = 1.86; reopen at H ≥ 2.0
WARM_STATE = {"warmup_history": WARM_H, "h_warm": 2.0, "tau_down": 1.86, "g": 1}


def entropy_step(H: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token entropy whose masked median and mean are H; garbage in the masked-out slot."""
    ent_BT = t64([[H - 0.5, H, H + 0.5, NAN], [H, 1e9, -1e9, INF]])
    mask_BT = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    return ent_BT, mask_BT  # masked values: H−½, H, H+½, H → median H, mean H


@pytest.mark.parametrize("round_trip", [False, True])
@pytest.mark.parametrize("stat", ["median", "mean"])
def test_t5_gate(round_trip, stat):
    gate = EntropyGate(gate_stat=stat)
    out = []
    for H in WARM_H + AFTER_H:
        if round_trip:
            gate = EntropyGate.from_dict(json.loads(json.dumps(gate.to_dict())), gate_stat=stat)
        out.append(gate.step(*entropy_step(H))[0])
        if len(out) == 5:
            assert gate.to_dict() == WARM_STATE
    assert out == [0, 0, 0, 0, 0, 1, 0, 0, 1, 0]  # warm-up, then T5's gates
    assert gate.to_dict()["g"] == 0


def test_t5_gate_scalar_and_reference_values():
    gate = EntropyGate()
    assert [gate.update_scalar(h) for h in WARM_H] == [0] * 5
    assert gate.to_dict() == WARM_STATE
    assert [gate.update_scalar(h) for h in AFTER_H] == [1, 0, 0, 1, 0]


def test_t5_no_token_step_leaves_state_unchanged():
    empty = torch.zeros(2, 3, dtype=torch.bool)
    ent = torch.full((2, 3), NAN, dtype=F64)
    gate = EntropyGate()
    gate.update_scalar(2.0)
    before = gate.to_dict()
    assert gate.step(ent, empty) == (0, None)
    assert gate.to_dict() == before
    gate = EntropyGate.from_dict(WARM_STATE | {"g": 0})
    assert gate.step(ent, empty) == (0, None) and gate.to_dict() == WARM_STATE | {"g": 0}
    gate = EntropyGate.from_dict(WARM_STATE)
    assert gate.step(ent, empty) == (1, None) and gate.to_dict() == WARM_STATE


def test_t5_through_compute_antisd():
    state = None
    gates = []
    for H in WARM_H + AFTER_H:
        inp = group_of_four()
        inp.teacher_entropy_BT = torch.full((4, 3), H, dtype=F64)
        sent = (
            None
            if state is None
            else {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}
        )
        res = compute_credit("antisd", inp, {}, sent)
        assert sent == (None if state is None else state), (
            "compute must not mutate the state it got"
        )
        state = res.state
        gates.append(res.gate)
        if res.gate == 0:
            close(res.advantages_BT[0], [A1] * 3, 1e-12)
        else:
            close(res.advantages_BT[0], [0.795791, 0.960995, 0.866024])
    assert gates == [0, 0, 0, 0, 0, 1, 0, 0, 1, 0]
    assert state == WARM_STATE | {"g": 0}


def test_t5_initial_state_keys():
    assert EntropyGate().to_dict() == {
        "warmup_history": [],
        "h_warm": None,
        "tau_down": None,
        "g": 1,
    }
    assert EntropyGate.from_dict(None).to_dict() == EntropyGate.from_dict({}).to_dict()


@pytest.mark.parametrize(
    "bad",
    [
        {"warmup_history": [], "bogus": 1},
        {"warmup_history": "x"},
        {"warmup_history": [1.0, "a"]},
        {"g": 2},
        {"g": True},
        {"h_warm": "2"},
        [1, 2],
    ],
)
def test_t5_bad_state_is_value_error(bad):
    with pytest.raises(ValueError, match="AntiSD state"):
        EntropyGate.from_dict(bad)


# ---- T6: AMR-SD -------------------------------------------------------------------------------
I6 = [2.0, 0.3, -1.0, 7.0, -6.0]  # Î = clip(I, −5, 5) = [2.0, 0.3, −1.0, 5.0, −5.0]


def amrsd_row(A: float, step: int) -> torch.Tensor:
    # single rollout, Dr.GRPO-style exact A: size-1 group with grpo_std="none" gives A = r
    inp = CreditInputs(
        mask_BT=torch.ones(1, 5, dtype=torch.bool),
        rewards_B=t64([A]),
        group_ids_B=torch.tensor([0]),
        student_lp_BT=torch.zeros(1, 5, dtype=F64),
        teacher_lp_BT=t64([I6]),
        step=step,
    )
    return compute_credit("amrsd", inp, {"grpo_std": "none"}).advantages_BT[0]


def test_t6_amrsd():
    # A = +1: 1 + 0.2·ReLU(Î − 0.5) = [1.3, 1, 1, 1.9, 1]
    close(amrsd_row(1.0, 0), [1.3, 1.0, 1.0, 1.9, 1.0])
    # A = −1: −(1 + 0.1·ReLU(−Î − 0.5)) = [−1, −1, −1.05, −1, −1.45]
    close(amrsd_row(-1.0, 0), [-1.0, -1.0, -1.05, -1.0, -1.45])
    close(amrsd_row(A1, 0), [1.125831, 0.866024, 0.866024, 1.645445, 0.866024])
    # step 25: f = ½
    close(amrsd_row(1.0, 25), [1.15, 1.0, 1.0, 1.45, 1.0])
    close(amrsd_row(-1.0, 25), [-1.0, -1.0, -1.025, -1.0, -1.225])
    for step in (50, 51, 1000):
        close(amrsd_row(1.0, step), [1.0] * 5, 0)
        close(amrsd_row(-1.0, step), [-1.0] * 5, 0)
    close(amrsd_row(0.0, 0), [0.0] * 5, 0)


def test_t6_amrsd_in_group():
    # the A1 row of T6 through the unbiased GRPO of a group [1,0,0,1]
    res = compute_credit("amrsd", group_of_four(s=[0.0] * 5, t=I6))
    close(res.advantages_BT[0], [1.125831, 0.866024, 0.866024, 1.645445, 0.866024])


# ---- T7: RLSD ---------------------------------------------------------------------------------
def rlsd_row(A: float, step: int) -> torch.Tensor:
    inp = one_row(step=step)
    inp.rewards_B = t64([A])
    return compute_credit("rlsd", inp, {"grpo_std": "none"}).advantages_BT[0]


def test_t7_rlsd():
    # A = +1: w = e^u = [1.648721, 0.367879, 1] → clip [1.2, 0.8, 1] → ½ + ½·clip
    close(rlsd_row(1.0, 0), [1.1, 0.9, 1.0])
    # A = −1: w = e^{−u} = [0.606531, 2.718282, 1] → clip [0.8, 1.2, 1]
    close(rlsd_row(-1.0, 0), [-0.9, -1.1, -1.0])
    close(rlsd_row(1.0, 25), [1.05, 0.95, 1.0])  # λ = 0.25
    for step in (50, 99):
        close(rlsd_row(1.0, step), [1.0] * 3, 0)
        close(rlsd_row(-1.0, step), [-1.0] * 3, 0)
    close(rlsd_row(0.0, 0), [0.0] * 3, 0)


# ---- T8, T9: divergences ----------------------------------------------------------------------

# Trainer-side full-vocabulary divergences the sampled-token forms are checked against (SDPO
# compute_self_distillation_loss, github.com/lasgroup/SDPO; OPSD's GKD loss): generalised JSD with
# M = (1−α)·S + α·T; α = 0: KL(T‖S), α = 1: KL(S‖T); top-k entries plus a tail bucket.


def _kl(logp_V: torch.Tensor, logq_V: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ_v p_v (log p_v − log q_v) over the last axis; entries with p_v = 0 add 0."""
    p_V = logp_V.exp()
    return torch.where(p_V > 0, p_V * (logp_V - logq_V), 0.0).sum(-1)


def sdpo_token_loss(
    student_logp_V: torch.Tensor, teacher_logp_V: torch.Tensor, alpha: float = 0.5
) -> torch.Tensor:
    """Generalised JSD per position, shape ``[...]`` from log-probs ``[..., V]``.

    Naive reference::

        S, T = student_logp, teacher_logp
        M = log((1 - alpha) * exp(S) + alpha * exp(T))
        loss = (1 - alpha) * sum(exp(S) * (S - M)) + alpha * sum(exp(T) * (T - M))
    """
    S_V, T_V = student_logp_V, teacher_logp_V
    if alpha == 0.0:
        return _kl(T_V, S_V)  # KL(T‖S)
    if alpha == 1.0:
        return _kl(S_V, T_V)  # KL(S‖T)
    M_V = torch.logaddexp(S_V + math.log(1.0 - alpha), T_V + math.log(alpha))  # log M
    return (1.0 - alpha) * _kl(S_V, M_V) + alpha * _kl(T_V, M_V)


def topk_with_tail(logp_V: torch.Tensor, idx_K: torch.Tensor) -> torch.Tensor:
    """Kept entries ``idx_K`` plus a tail bucket log(1 − Σ kept p): ``[..., K+1]``."""
    kept_K = logp_V[..., idx_K]
    tail_1 = torch.log1p(-kept_K.exp().sum(-1, keepdim=True))
    return torch.cat([kept_K, tail_1], dim=-1)


def phi(u: torch.Tensor) -> torch.Tensor:
    """φ(u) = ½ (softplus(u) − log 2): the per-token reward of *descending* JSD (β = ½) in u.

    With r = e^u, f(r) = ½[r log r − (1+r) log((1+r)/2)] and f(r) − r f'(r) = −φ(u), so
    ∇_θ JSD = E_{y∼π_S}[−φ(u_y) ∇_θ log π_S(y)]; AntiSD ascends with advantage −φ(u).
    """
    return -antisd_token_signal(u)


P8 = [0.5, 0.3, 0.2]  # student
Q8 = [0.2, 0.5, 0.3]  # teacher


@pytest.mark.parametrize(
    ("alpha", "want"),
    [(0.0, 0.193794), (1.0, 0.223805), (0.5, 0.050875), (0.25, 0.037065)],
)
def test_t8_divergences(alpha, want):
    S, Tq = t64(P8).log(), t64(Q8).log()
    assert float(sdpo_token_loss(S, Tq, alpha)) == pytest.approx(want, abs=1e-6)


def test_t8_top2_tail_reproduces_jsd():
    S, Tq = t64(P8).log(), t64(Q8).log()
    idx = torch.tensor([0, 1])
    S2, T2 = topk_with_tail(S, idx), topk_with_tail(Tq, idx)
    close(S2.exp(), P8, 1e-12)  # tail = 1 − 0.8 = 0.2 = p[2]
    close(T2.exp(), Q8, 1e-12)
    assert float(sdpo_token_loss(S2, T2, 0.5)) == pytest.approx(0.050875, abs=1e-6)


def test_t8_batched_and_zero_probabilities():
    S = torch.stack([t64(P8).log(), t64([0.5, 0.5, 0.0]).log()])  # [2, 3], one −inf entry
    Tq = torch.stack([t64(Q8).log(), t64([0.5, 0.5, 0.0]).log()])
    for alpha in (0.0, 0.25, 0.5, 1.0):
        out = sdpo_token_loss(S, Tq, alpha)
        assert out.shape == (2,) and not out.isnan().any()
        assert float(out[1]) == pytest.approx(0.0, abs=1e-15)


def test_t9_phi_sign_by_central_differences():
    z = t64([0.3, -0.2, 0.1])
    logq = t64(Q8).log()
    p = torch.softmax(z, 0)
    close(p, [0.412327, 0.250089, 0.337585])
    u = logq - torch.log_softmax(z, 0)  # teacher vs student
    close(u, [-0.723499, 0.692792, -0.118033])
    close(-phi(u), [0.148849, -0.202614, 0.028638])

    def jsd(zz):
        return float(sdpo_token_loss(torch.log_softmax(zz, 0), logq, 0.5))

    h = 1e-5
    eye = torch.eye(3, dtype=F64)
    fd = t64([(jsd(z + h * eye[k]) - jsd(z - h * eye[k])) / (2 * h) for k in range(3)])
    close(fd, [0.052975, -0.055766, 0.002791])
    # E_{y∼p}[−φ(u_y) ∇_z log p_y], ∇_z log p_y = e_y − p
    expect = ((p * -phi(u))[:, None] * (eye - p[None, :])).sum(0)
    assert (fd - expect).abs().max() < 1e-10
    # and autograd agrees
    zg = z.clone().requires_grad_(True)
    sdpo_token_loss(torch.log_softmax(zg, 0), logq, 0.5).backward()
    assert (zg.grad - expect).abs().max() < 1e-12


# ---- T11: masking, zero-length row ------------------------------------------------------------
T11_WANT = {
    "grpo": [0.707106, 0.707106],  # rewards [1, 0]: ±0.5/(√½ + ε)
    "dr_grpo": [0.5, 0.5],
    "opd": [0.75, -0.75],  # masked mean of s − t = (−0.5 + 1.0)/2 = 0.25
    "opsd": [0.5, -1.0],
    "sdpo": [0.5, -1.0],
    "hsd": [0.853553, -0.646447],  # mix 0.5: u + 0.353553
    "rlsd": [0.777816, 0.636395],  # A·(½ + ½·[1.2, 0.8])
    "amrsd": [0.707106, 0.707106],  # |Î| ≤ 1: only Î = 0.5 − τ = 0 → Δ = 0
    "antisd": [0.636873, 0.802077],  # A + 0.5·δ(u)
}


def t11_inputs() -> CreditInputs:
    return CreditInputs(
        mask_BT=torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool),
        rewards_B=t64([1, 0]),
        group_ids_B=torch.tensor([0, 0]),
        student_lp_BT=t64([[-1.0, -2.0, -0.5], [-0.3, -0.3, -0.3]]),
        teacher_lp_BT=t64([[-0.5, -3.0, -INF], [NAN, -0.3, -0.3]]),
        teacher_entropy_BT=t64([[1.0, 1.0, NAN], [NAN, NAN, NAN]]),
    )


@pytest.mark.parametrize("method", list(METHODS))
def test_t11_masking(method):
    params = {"mix": 0.5} if method == "hsd" else {}
    res = compute_credit(method, t11_inputs(), params, OPEN if method == "antisd" else None)
    for out in (res.advantages_BT, res.signal_BT):
        assert not out.isnan().any()
        assert out[1].tolist() == [0.0, 0.0, 0.0]
        assert out[0, 2].item() == 0.0
    close(res.advantages_BT[0, :2], T11_WANT[method])


def test_t11_opd_all_zero_mask():
    inp = t11_inputs()
    inp.mask_BT = torch.zeros(2, 3, dtype=torch.bool)
    res = compute_credit("opd", inp)
    assert res.advantages_BT.tolist() == [[0.0] * 3] * 2


def test_t11_float32():
    inp = t11_inputs()
    for name in ("rewards_B", "student_lp_BT", "teacher_lp_BT", "teacher_entropy_BT"):
        setattr(inp, name, getattr(inp, name).float())
    for method in METHODS:
        params = {"mix": 0.5} if method == "hsd" else {}
        res = compute_credit(method, inp, params, OPEN if method == "antisd" else None)
        assert res.advantages_BT.dtype == torch.float32
        close(res.advantages_BT[0, :2], T11_WANT[method], 1e-5)
        assert res.advantages_BT[1].tolist() == [0.0] * 3
