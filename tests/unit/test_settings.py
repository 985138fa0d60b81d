import pytest
from pydantic import ValidationError

from cca.settings import Settings


def test_hnsw_search_breadth_must_cover_the_neighbours_asked_for():
    # HNSW returns at most ef_search rows: a smaller value would silently shrink top-k.
    with pytest.raises(ValidationError, match=r"CCA_CACHE_HNSW_EF_SEARCH \(4\) must be at "
                                              r"least CCA_CACHE_TOP_K \(5\)"):
        Settings(cache_hnsw_ef_search=4, cache_top_k=5)
    assert Settings(cache_hnsw_ef_search=5, cache_top_k=5).cache_hnsw_ef_search == 5
    assert Settings().cache_hnsw_ef_search >= Settings().cache_top_k


def test_the_gil_switch_interval_is_bounded():
    assert Settings().serve_gil_switch_ms == 1.0
    for bad in (0, -1, 101):
        with pytest.raises(ValidationError, match="serve_gil_switch_ms"):
            Settings(serve_gil_switch_ms=bad)
