"""paretopipe.predict on hand-made profiles: exact numbers, the window, 3-stage chains, selection."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from paretopipe.errors import ConfigError
from paretopipe.predict import (
    TCP_ETHERNET_OVERHEAD,
    CodecCost,
    DeviceProfile,
    Link,
    chains,
    device_profile,
    predict_all,
    predict_chain,
    select,
)

# 4 blocks; crossing bytes at k = 0..4 (input, then each block's output; the last is the logits)
BYTES = (1_000_000, 500_000, 250_000, 125_000, 1_000)


def dev(*block_s: float, host: str = "pi") -> DeviceProfile:
    return DeviceProfile(model="toy", num_classes=10, input_size=32, batch_size=4, device="cpu", host=host,
                         block_s=tuple(block_s), crossing_bytes=BYTES)


PI = dev(0.010, 0.020, 0.030, 0.040)
SERVER = dev(0.001, 0.002, 0.003, 0.004, host="server")
# 8 Mbit/s: one byte takes exactly 1 us; 10 ms one-way; 1 ms per message
LINK = Link(delay_s=0.010, rate_bit_s=8e6, overhead_s=0.001)


def test_transfer_is_bytes_over_rate_plus_delay_plus_overhead():
    assert LINK.transfer_s(500_000) == pytest.approx(0.5 + 0.010 + 0.001)
    assert LINK.busy_s(500_000) == pytest.approx(0.5 + 0.001)
    assert Link(delay_s=0.002).transfer_s(10**9) == pytest.approx(0.002)  # no rate cap
    framed = Link(rate_bit_s=8e6, framing=TCP_ETHERNET_OVERHEAD)
    assert framed.transfer_s(1448) == pytest.approx(1514e-6)


def test_two_stage_latency_is_head_plus_transfers_plus_tail():
    p = predict_chain([PI, SERVER], [2], LINK)
    assert p.compute_s == pytest.approx((0.030, 0.007))
    assert p.hop_bytes == (250_000, 1_000)
    assert p.hop_transfer_s == pytest.approx((0.261, 0.012))
    assert p.latency_s == pytest.approx(0.030 + 0.261 + 0.007 + 0.012)
    assert p.latency_unloaded_s == p.latency_s
    assert p.throughput_batch_s == pytest.approx(1 / 0.310)  # W = 1: one batch per latency
    assert p.throughput_img_s == pytest.approx(4 / 0.310)
    assert p.bottleneck == "window"


def test_ends_send_the_input_or_keep_everything_local():
    everything_remote = predict_chain([PI, SERVER], [0], LINK)
    assert everything_remote.compute_s == pytest.approx((0.0, 0.010))
    assert everything_remote.hop_bytes == (1_000_000, 1_000)
    local = predict_chain([PI, SERVER], [4], LINK)
    assert local.compute_s == pytest.approx((0.100, 0.0))
    assert local.hop_bytes == (1_000, 1_000)  # the logits cross, and come back
    assert local.latency_s == pytest.approx(0.100 + 2 * 0.012)


def test_window_pipelines_up_to_the_slowest_stage_or_link():
    # k = 2: period = max(0.030, 0.007, link busy 0.251, 0.002) = 0.251 (hop 0); L0 = 0.310
    p = predict_chain([PI, SERVER], [2], LINK, window=4)
    assert p.bottleneck == "hop 0"
    assert p.throughput_batch_s == pytest.approx(1 / 0.251)
    assert p.latency_s == pytest.approx(4 * 0.251)  # Little's law: W in flight at 1/P each
    assert p.latency_unloaded_s == pytest.approx(0.310)
    # a window of 1.2 periods' worth is window-bound: W / L0
    q = predict_chain([PI, SERVER], [2], LINK, window=1)
    assert q.throughput_batch_s == pytest.approx(1 / 0.310)
    # without a rate cap the slowest stage bounds it: the head (0.030) at k = 2
    fast = Link(delay_s=0.0, overhead_s=0.0)
    r = predict_chain([PI, SERVER], [2], fast, window=8)
    assert r.bottleneck == "stage 0" and r.throughput_batch_s == pytest.approx(1 / 0.030)
    # the source's head is the slowest: batches wait before the source stamps them, so no queue
    # counts in their latency
    assert r.latency_s == pytest.approx(0.037)
    # the tail the slowest: W batches queue in flight in front of it
    t = predict_chain([SERVER, PI], [2], fast, window=8)
    assert t.bottleneck == "stage 1" and t.throughput_batch_s == pytest.approx(1 / 0.070)
    assert t.latency_s == pytest.approx(8 * 0.070)


def test_window_bound_with_a_long_delay():
    slow = Link(delay_s=0.5, rate_bit_s=None, overhead_s=0.0)
    p = predict_chain([PI, SERVER], [2], slow, window=2)
    assert p.bottleneck == "window"
    assert p.throughput_batch_s == pytest.approx(2 / (0.037 + 1.0))
    assert p.latency_s == pytest.approx(1.037)


def test_throughput_over_n_batches_matches_the_runtime_definition():
    # n batches over first send to last completion: (n - 1) periods + one latency
    p = predict_chain([PI, SERVER], [2], LINK, window=4, batches=10)
    assert p.throughput_steady_batch_s == pytest.approx(1 / 0.251)
    assert p.throughput_batch_s == pytest.approx(10 / (9 * 0.251 + 4 * 0.251))
    w1 = predict_chain([PI, SERVER], [2], LINK, window=1, batches=10)
    assert w1.throughput_batch_s == pytest.approx(1 / 0.310)  # W = 1: no edge effect


def test_three_stage_chain():
    mid = dev(0.005, 0.005, 0.005, 0.005, host="mid")
    p = predict_chain([PI, mid, SERVER], [1, 3], LINK)
    assert p.compute_s == pytest.approx((0.010, 0.010, 0.004))
    assert p.hop_bytes == (500_000, 125_000, 1_000)
    assert p.latency_s == pytest.approx(0.024 + (0.511 + 0.136 + 0.012))
    q = predict_chain([PI, mid, SERVER], [1, 3], LINK, window=3)
    assert q.bottleneck == "hop 0" and q.throughput_batch_s == pytest.approx(1 / 0.501)
    assert len(chains(4, 3)) == 15  # non-decreasing pairs in 0..4
    with pytest.raises(ConfigError, match="one per device"):
        predict_chain([PI, mid], [1, 3], LINK)
    with pytest.raises(ConfigError, match="non-decreasing"):
        predict_chain([PI], [3, 1], LINK)


def test_predicted_frontier_and_selection():
    # server 10x faster: offloading early wins on a fast link, keeping it local wins on a slow one
    fast = Link(delay_s=0.0005, rate_bit_s=1e9, overhead_s=0.0)
    preds = predict_all([PI, SERVER], fast, window=1)
    assert [p.splits for p in preds] == [(k,) for k in range(5)]
    best = min(preds, key=lambda p: p.latency_s)
    assert best.splits == (0,) and best.on_frontier
    assert [p.splits for p in preds if p.on_frontier] == [(0,)]
    assert select(preds, 4) == [(0,), (1,), (4,)]  # frontier, its neighbour, the two ends

    slow = Link(delay_s=0.05, rate_bit_s=1e6, overhead_s=0.0)
    preds = predict_all([PI, SERVER], slow, window=1)
    assert [p.splits for p in preds if p.on_frontier] == [(4,)]
    assert select(preds, 4) == [(0,), (3,), (4,)]


def test_selection_covers_a_frontier_in_the_middle_and_its_neighbours():
    balanced = dev(0.010, 0.010, 0.010, 0.010)
    link = Link(delay_s=0.0, rate_bit_s=None, overhead_s=0.0)
    preds = predict_all([balanced, balanced], link, window=2)
    # k = 2 halves the work: 1 / 0.020 batches/s; every other split is slower and no faster
    assert [p.splits for p in preds if p.on_frontier] == [(2,)]
    assert select(preds, 4) == [(0,), (1,), (2,), (3,), (4,)]


def test_tolerance_adds_near_ties():
    a = dev(0.010, 0.010, 0.0101, 0.030)
    link = Link(delay_s=0.0, rate_bit_s=None, overhead_s=0.0)
    preds = predict_all([a, a], link, window=4, stages=2)
    front = [p.splits for p in preds if p.on_frontier]
    assert front == [(3,)]
    assert (1,) not in select(preds, 4)
    with_tol = select(preds, 4, tolerance=0.6)
    assert (1,) in with_tol and (2,) in with_tol


def test_three_stage_selection_has_both_ends():
    mid = dev(0.005, 0.005, 0.005, 0.005)
    preds = predict_all([PI, mid, SERVER], LINK, window=1)
    chosen = select(preds, 4)
    assert (0, 0) in chosen and (4, 4) in chosen
    for ks in (p.splits for p in preds if p.on_frontier):
        assert ks in chosen
        for i in range(2):
            for step in (-1, 1):
                nb = list(ks)
                nb[i] += step
                if tuple(nb) in {p.splits for p in preds}:
                    assert tuple(nb) in chosen


def test_device_profile_reads_median_or_mean():
    doc = {"config": {"model": "toy", "num_classes": 10, "input_size": 32, "batch_size": 4, "device": "cpu"},
           "host": {"hostname": "pi"}, "input_bytes": 100,
           "blocks": [{"compute_s": {"median": 0.1, "mean": 0.2}, "output_bytes": 50}]}
    assert device_profile(doc).block_s == (0.1,)
    assert device_profile(doc, statistic="mean").block_s == (0.2,)
    assert device_profile(doc).crossing_bytes == (100, 50)
    with pytest.raises(ConfigError, match="statistic"):
        device_profile(doc, statistic="p90")


def test_bad_inputs_are_config_errors():
    with pytest.raises(ConfigError):
        Link(delay_s=-1.0)
    with pytest.raises(ConfigError):
        Link(rate_bit_s=0.0)
    with pytest.raises(ConfigError, match="window"):
        predict_chain([PI], [1], LINK, window=0)
    with pytest.raises(ConfigError, match="tolerance"):
        select(predict_all([PI], LINK), 4, tolerance=-0.1)
    assert math.isfinite(predict_chain([PI], [4], Link()).throughput_batch_s)


def test_configurations_cover_windows_and_batch_sizes_and_select_across_them():
    from dataclasses import replace

    from paretopipe.predict import predict_configurations, select_configurations

    big = [replace(PI, batch_size=8, block_s=tuple(2 * b for b in PI.block_s), crossing_bytes=tuple(2 * b for b in BYTES)),
           replace(SERVER, batch_size=8, block_s=tuple(2 * b for b in SERVER.block_s),
                   crossing_bytes=tuple(2 * b for b in BYTES))]
    preds = predict_configurations([[PI, SERVER], big], LINK, windows=(1, 4))
    assert {(p.window, p.batch_size) for p in preds} == {(1, 4), (4, 4), (1, 8), (4, 8)}
    assert len(preds) == 4 * 5
    # one frontier across the group: a pipelined window beats W=1 on throughput at the same split
    w1 = {p.splits: p for p in preds if (p.window, p.batch_size) == (1, 4)}
    w4 = {p.splits: p for p in preds if (p.window, p.batch_size) == (4, 4)}
    assert w4[(2,)].throughput_img_s > w1[(2,)].throughput_img_s
    chosen = select_configurations(preds, 4)
    for p in preds:
        if p.on_frontier:
            assert p.configuration in chosen
    for w in (1, 4):
        for b in (4, 8):
            assert ((0,), w, b, "none") in chosen and ((4,), w, b, "none") in chosen  # the ends at every window and batch
    with pytest.raises(ConfigError, match="same batch size"):
        predict_configurations([[PI, SERVER], [PI, SERVER]], LINK)
    with pytest.raises(ConfigError, match="select_configurations"):
        select(preds, 4)


# --- codecs: wire bytes = raw x ratio, encode on the sender, decode on the receiver ---------------

def _coded(d: DeviceProfile, encode_s: float, decode_s: float) -> DeviceProfile:
    """``d`` with int8 (a quarter of the bytes) and fp16 (half) measured at every split."""
    return replace(d, codecs={
        "none": tuple(CodecCost(b, 0.0, 0.0) for b in BYTES),
        "fp16": tuple(CodecCost(b // 2, encode_s / 2, decode_s / 2) for b in BYTES),
        "int8": tuple(CodecCost(b // 4, encode_s, decode_s) for b in BYTES)})


def test_a_codec_hop_carries_wire_bytes_and_adds_encode_and_decode():
    pi, server = _coded(PI, 0.004, 0.002), _coded(SERVER, 0.001, 0.0005)
    p = predict_chain([pi, server], [2], LINK, codec="int8")
    assert p.codec == "int8" and p.configuration == ((2,), 1, 4, "int8")
    assert p.hop_bytes == (62_500, 1_000) and p.hop_raw_bytes == (250_000, 1_000)  # logits return uncoded
    assert p.encode_s == (0.004, 0.0) and p.decode_s == (0.0005, 0.0)  # sender's encode, receiver's decode
    assert p.latency_s == pytest.approx(0.030 + 0.004 + (0.0625 + 0.011) + 0.0005 + 0.007 + 0.012)
    hop = p.as_dict()["hops"][0]
    assert hop["bytes"] == 62_500 and hop["raw_bytes"] == 250_000 and hop["encode_s"] == 0.004
    # none: exactly the uncoded prediction, with or without codec measurements
    assert predict_chain([pi, server], [2], LINK, codec="none").latency_s == predict_chain([PI, SERVER], [2], LINK).latency_s


def test_on_a_slow_link_int8_ranks_above_none_at_an_early_split():
    from paretopipe.predict import predict_configurations, select_configurations

    slow = Link(rate_bit_s=5e6, overhead_s=0.001)
    pi, server = _coded(PI, 0.004, 0.002), _coded(SERVER, 0.001, 0.0005)
    preds = predict_configurations([[pi, server]], slow, codecs=("none", "int8"))
    by = {(p.splits, p.codec): p for p in preds}
    assert len(preds) == 2 * 5
    for k in (0, 1):
        assert by[((k,), "int8")].latency_s < by[((k,), "none")].latency_s / 3
        assert by[((k,), "int8")].rank < by[((k,), "none")].rank
    chosen = select_configurations(preds, 4)
    assert {c for *_, c in chosen} == {"none", "int8"}  # the selection is over codecs too
    assert all(p.configuration in chosen for p in preds if p.on_frontier)
    assert ((0,), 1, 4, "int8") in chosen and ((4,), 1, 4, "none") in chosen  # the ends, per codec


def test_a_codec_without_measurements_is_refused_with_the_fix():
    from paretopipe.predict import predict_configurations

    old = replace(PI, schema_version=1, source="old.json")  # a version-1 profile: codecs None
    with pytest.raises(ConfigError, match=r"old.json \(schema_version 1\) has no codec measurements.*paretopipe profile"):
        predict_configurations([[old, SERVER]], LINK, codecs=("none", "int8"))
    assert len(predict_configurations([[old, old]], LINK, codecs=("none",))) == 5  # none needs none
    partial = _coded(SERVER, 0.001, 0.001)
    with pytest.raises(ConfigError, match="did not measure codec bf16"):
        predict_chain([partial, partial], [1], LINK, codec="bf16")
