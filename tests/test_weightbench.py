"""`onvm bench weights` on a short run: through the real fast path, weights
from measured load spread skewed traffic more evenly than the plan's shares
do, and no flow ever changes its host (pins).  The figures are the
benchmark's (BENCHMARKS.md); this checks the direction and the affinity."""
from onvm.weightbench import bench


def test_measured_weights_even_out_skewed_load_and_keep_every_flow_on_its_host():
    out = bench(epochs=8, seeds=(3,))
    run = out["runs"][0]
    shares, measured = run["shares"], run["measured"]
    assert shares["flows"] == measured["flows"] > 1000
    assert shares["flows_moved"] == measured["flows_moved"] == 0
    # Seed 3 puts two of the four elephants on one peer: with shares alone
    # it stays the busiest by far.
    assert shares["busiest_over_mean"] > 1.25
    assert measured["busiest_over_mean"] < shares["busiest_over_mean"] - 0.1
    assert len(set(shares["last_epoch"]["weights"].values())) == 1
    assert len(set(measured["last_epoch"]["weights"].values())) > 1
