"""The predictor path in one kernel (triton_predictor_rows.py), under TRITON_INTERPRET=1: its code runs as three
launches there (a grid barrier cannot open when programs run one after another; the GPU tests run the barriers).

SparseFFN given a LowRankLogits with DispatchConfig(low_rank_kernel="phases") against the float64 FFN restricted to
the float64 predicted set: activations, biases or none, a pre_norm `source`, 0% / some / 100% predicted, the
output poisoned, several calls on one FFN (list length and barrier counters left at zero); with gate_first too.
"""
import pytest
import torch
from triton_interpreter import require_triton_interpreter

require_triton_interpreter()

from actsparse.kernels import DispatchConfig  # noqa: E402

from ffn_reference import check, random_ffn  # noqa: E402
from low_rank_cases import CUTS, make_predictor, predictor_with_cut  # noqa: E402

D, F, RANK = 40, 100, 21


def phases(**kw):
    return DispatchConfig(batch_mode="union", low_rank_kernel="phases", **kw)


@pytest.mark.parametrize("gate_first", [False, True])
@pytest.mark.parametrize("cut_kind", list(CUTS))
@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("relu_hidden", [False, True])
@pytest.mark.parametrize("activation,threshold", [("relu", 0.0), ("fatrelu", 0.25)])
def test_one_launch_predictor_path_matches_float64(activation, threshold, relu_hidden, biases, cut_kind, gate_first,
                                                   monkeypatch):
    from actsparse.kernels import triton_predictor_list, triton_rows_ffn
    for module, name in ((triton_predictor_list, "launch_predictor_list"), (triton_rows_ffn, "launch_rows")):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} ran"))
    ffn, ref = random_ffn(D, F, activation, threshold, phases(gate_first=gate_first), 0.0, seed=31, biases=biases)
    pred = make_predictor(D, F, RANK, relu_hidden, biases, seed=32)
    g = torch.Generator().manual_seed(33)
    for fp32_out in (True, False, True):
        x = torch.randn(1, D, generator=g)
        low_rank, mask = predictor_with_cut(pred, x, cut_kind)
        y = ffn(x, low_rank, fp32_out=fp32_out)
        assert y.dtype == torch.float32
        check(y, ref(x, mask))
        assert not ffn._list_state.any()
        (state,) = ffn._predictor_rows_state.values()
        assert not state[RANK:].view(torch.int32).any()   # barrier counters and exit ticket back at zero


@pytest.mark.parametrize("d,f,rank", [(24, 301, 130), (40, 7, 5), (24, 50, 600), (24, 500, 40)])
def test_shapes_where_blocks_loop_and_programs_idle(d, f, rank):
    """rank 130 over 3 programs: W1 blocks of 8 rows looping; d_ff 7: programs with fewer neurons than BLOCK_N;
    rank 600 / 167 neurons a program: W2 read after h in steps (list_range) instead of one early tile; and a
    pre_norm source."""
    ffn, ref = random_ffn(d, f, "relu", 0.0, phases(), 0.0, seed=f, biases=True)
    pred = make_predictor(d, f, rank, True, True, seed=rank)
    g = torch.Generator().manual_seed(34)
    x, source = torch.randn(1, d, generator=g), torch.randn(1, d, generator=g)
    low_rank, mask = predictor_with_cut(pred, source, "some")
    check(ffn(x, low_rank._replace(source=source)), ref(x, mask))


def test_unusable_falls_back_to_the_three_kernels(monkeypatch):
    """Predictor weights in another dtype than the FFN's: the three kernels run (said once), same result."""
    from actsparse.kernels import triton_predictor_list
    launched = []
    launch = triton_predictor_list.launch_predictor_list
    monkeypatch.setattr(triton_predictor_list, "launch_predictor_list",
                        lambda *a, **k: launched.append(1) or launch(*a, **k))
    ffn, ref = random_ffn(D, F, "relu", 0.0, phases(), 0.0, seed=35, biases=False)
    pred = make_predictor(D, F, RANK, True, False, seed=36)
    x = torch.randn(1, D, generator=torch.Generator().manual_seed(37))
    low_rank, mask = predictor_with_cut(pred, x, "some")
    low_rank = low_rank._replace(down=low_rank.down.double(), up=low_rank.up.double())
    check(ffn(x, low_rank), ref(x, mask))
    assert launched == [1]


def test_low_rank_kernel_is_validated():
    with pytest.raises(ValueError, match="low_rank_kernel"):
        DispatchConfig(low_rank_kernel="one")
