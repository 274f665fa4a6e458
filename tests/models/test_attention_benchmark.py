"""bench-attention's library function on tiny lengths (no timing claims: shapes of the result)."""
from kx_spacy.models.attention_benchmark import (format_table, interleaved_ratio, measure_cpu_peak_memory_child,
                                                 run_attention_benchmark, save_benchmark)


def test_benchmark_result_table_and_files(tmp_path):
    result = run_attention_benchmark("cpu", [16, 32], batch=1, heads=2, head_dim=8, chunk_size=8, memory=False,
                                     decode_positions=[4, 8], decode_steps=2, budget_s=0.01, max_repeats=1)
    methods = {r["method"] for r in result["rows"]}
    assert {"kx_causal", "kx_causal_cumsum", "kx_causal_loop", "kx_noncausal", "sdpa_causal",
            "sdpa_noncausal"} <= methods
    assert "kx_causal_cumsum_over_kx_causal_forward_backward_ms" in result["summary"]
    assert len(result["rows"]) == 2 * len(methods)
    assert all(r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 for r in result["rows"])
    assert result["decode"]["position"] == [4, 8]
    assert "crossover_T_causal_forward_backward_ms" in result["summary"]
    assert "decode_speedup_at_last_position" in result["summary"]
    assert "kx_causal" in format_table(result)
    paths = save_benchmark(result, tmp_path, "bench")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths.values())


def test_cpu_peak_memory_of_one_point_is_measured():
    mib = measure_cpu_peak_memory_child("kx_causal", 64, 1, 2, 8, 16)
    assert mib >= 0.0


def test_interleaved_ratio_times_every_call_in_both_clocks():
    res = interleaved_ratio(32, 2, batch=1, heads=2, head_dim=8, chunk_size=8)
    assert set(res["median_ms"]) == {"kx_forward", "kx_forward_backward", "sdpa_forward", "sdpa_forward_backward"}
    assert all(len(v["cpu"]) == 2 and len(v["wall"]) == 2 for v in res["times_ms"].values())
    assert all(r > 0 for r in res["sdpa_over_kx"].values())
