"""``python -m fastbp.demo``: the side-by-side run of fastbp and plain NumPy, made small."""

import fastbp
from fastbp import demo


def test_demo_trains_both_and_prints_the_comparison(capsys):
    demo.main(["--samples", "200", "--epochs", "1", "--repeats", "1"])
    out = capsys.readouterr().out
    assert out.startswith("Engine ready in")
    assert "Reference example: 2-2-1" in out and "Generated problem: 2-64-64-3" in out
    rows = [line for line in out.splitlines() if line.startswith(("  notebook", "  spirals"))]
    assert len(rows) == 2, out
    for row in rows:  # the last column is fastbp's largest relative difference from NumPy
        assert float(row.split()[-1]) < 1e-10, row


def test_demo_is_not_the_package_entry_point():
    import fastbp.__main__ as entry

    assert entry.main is fastbp.cli.main
