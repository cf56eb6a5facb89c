"""llm.c's Mersenne Twister: the standard MT19937 stream for an integer seed, and llm.c's shuffle."""

import numpy as np

from ds_train.mt19937 import MT19937, random_permutation


def test_stream_matches_llmc_documented_values():
    # llmc/rand.h documents these first draws for manual_seed(137)
    rng = MT19937(137)
    assert [rng.randint32() for _ in range(5)] == [4053805790, 2173880614, 380293709, 1237255315, 2986595568]


def test_stream_matches_numpy_mt19937():
    for seed in (42, 43, 137):  # numpy's legacy integer seeding is the same init_genrand as llm.c's manual_seed
        ours = MT19937(seed)
        theirs = np.random.RandomState(seed).randint(0, 2**32, size=3000, dtype=np.uint64).tolist()
        assert [ours.randint32() for _ in range(3000)] == theirs


def test_state_dict_resumes_the_stream():
    rng = MT19937(42)
    for _ in range(700):  # past one 624-word twist
        rng.randint32()
    saved = rng.state_dict()
    expected = [rng.randint32() for _ in range(1000)]
    restored = MT19937(0)
    restored.load_state_dict(saved)
    assert [restored.randint32() for _ in range(1000)] == expected


def test_random_permutation_is_a_permutation_and_depends_on_the_seed():
    a, b = list(range(100)), list(range(100))
    random_permutation(a, MT19937(42))
    random_permutation(b, MT19937(43))
    assert sorted(a) == list(range(100)) and sorted(b) == list(range(100))
    assert a != list(range(100)) and a != b
