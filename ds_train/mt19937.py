"""The Mersenne Twister as llm.c uses it (llmc/rand.h, itself numerically identical to torch's CPU generator).

llm.c shuffles its data with this generator, so reproducing llm.c's batch order means reproducing its exact
stream of 32-bit draws and its Fisher-Yates variant. The state is plain ints so a checkpoint can store it.
"""

_N, _M = 624, 397
_MATRIX_A = 0x9908B0DF
_UPPER, _LOWER = 0x80000000, 0x7FFFFFFF


class MT19937:
    def __init__(self, seed: int):
        mt = [seed & 0xFFFFFFFF]
        for j in range(1, _N):
            mt.append((1812433253 * (mt[j - 1] ^ (mt[j - 1] >> 30)) + j) & 0xFFFFFFFF)
        self.mt = mt
        self.index = _N  # forces a twist before the first draw, as llm.c's left_ = 1 does

    def _twist(self):
        mt = self.mt
        for j in range(_N):
            y = (mt[j] & _UPPER) | (mt[(j + 1) % _N] & _LOWER)
            mt[j] = mt[(j + _M) % _N] ^ (y >> 1) ^ (_MATRIX_A if y & 1 else 0)
        self.index = 0

    def randint32(self) -> int:
        if self.index >= _N:
            self._twist()
        y = self.mt[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y

    def state_dict(self) -> dict:
        return {"mt": list(self.mt), "index": self.index}

    def load_state_dict(self, state: dict):
        if len(state["mt"]) != _N:
            raise ValueError(f"mt19937 state must hold {_N} words, got {len(state['mt'])}")
        self.mt = [int(v) & 0xFFFFFFFF for v in state["mt"]]
        self.index = int(state["index"])


def random_permutation(items: list, rng: MT19937) -> None:
    """Shuffle `items` in place exactly as llm.c's random_permutation does.

    llm.c permutes the current contents (it does not reset to identity first), so the shard order keeps
    evolving from epoch to epoch; callers that want a fresh permutation pass an identity list.
    """
    for i in range(len(items) - 1, 0, -1):
        j = rng.randint32() % (i + 1)
        items[i], items[j] = items[j], items[i]
