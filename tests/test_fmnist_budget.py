"""The budget probe's reading of its runs: which budget is the first flat one, and the final-loss comparison."""
from benchmarks import fmnist_budget as probe


def _row(method, epochs, drop, bins=None):
    flat = probe.is_flat(drop)
    return {"method": method, "epochs": epochs, "last_quarter_drop": drop, "flat": flat,
            "loss_bins": bins or [], "train_wall_seconds": 10.0, "img_per_s": 100.0}


def test_the_first_flat_budget_is_the_shortest_one_that_passes():
    rows = [_row("cc", 8, 0.01), _row("cc", 2, 0.08), _row("cc", 4, 0.019),  # order of arrival is not order
            _row("reg", 2, 0.03), _row("reg", 4, 0.021),                       # never flat
            _row("moco", 2, -0.085), _row("moco", 4, -0.01)]                    # rising is not flat
    assert probe.budget_by_method(rows) == {"cc": 4, "reg": None, "moco": 4}


def test_the_final_loss_is_the_last_tenth_and_is_compared_with_the_shorter_budget():
    short = _row("seed", 2, 0.05, [2.0] * 36 + [1.0] * 4)
    long = _row("seed", 4, 0.01, [2.0] * 36 + [0.9] * 4)
    assert probe.final_loss(short) == 1.0 and probe.final_loss(_row("seed", 1, 0.0, [1.0] * 10)) is None
    lines = probe.table([long, short]).splitlines()
    assert lines[2].startswith("| seed | 2 | 5.0 % | no | 1.0000 | - |")
    assert lines[3].startswith("| seed | 4 | 1.0 % | yes | 0.9000 | -10.0 % |")
