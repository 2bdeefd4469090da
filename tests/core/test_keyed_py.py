"""KeyedBuckets: one GCRA bucket per key in a bounded table (pure-Python twin).

Written against `impl`, a module exporting KeyedBuckets, KEYED_EVICT and
KEYED_REJECT, so the same tests can run on the compiled core by swapping the
fixture for the shared `core` one. The SipHash vectors and the golden traces
pin the twin to csrc/rs_keyed.h: the digests below were produced by a C
driver running the same operation sequence on the C table.
"""

from __future__ import annotations

import hashlib
import types

import pytest

from resilio import _keyed_py

IV = 100_000_000  # ns per token at rate 10/s
T = 10**12  # an arbitrary clock reading
SECRET = bytes(range(100, 116))


@pytest.fixture
def impl() -> types.ModuleType:
    return _keyed_py


def make(impl, burst=3, max_keys=1024, on_full=None, rate=10.0, secret=SECRET):
    if on_full is None:
        on_full = impl.KEYED_EVICT
    return impl.KeyedBuckets(rate, burst, max_keys, secret=secret, on_full=on_full)


# ---- SipHash-2-4-128 ---------------------------------------------------------------

# vectors_sip128 of veorq/SipHash vectors.h: key 00..0f, input 00..n-1.
SIP128 = """
a3817f04ba25a8e66df67214c7550293 da87c1d86b99af44347659119b22fc45 8177228da4a45dc7fca38bdef60affe4
9c70b60c5267a94e5f33b6b02985ed51 f88164c12d9c8faf7d0f6e7c7bcd5579 1368875980776f8854527a07690e9627
14eeca338b208613485ea0308fd7a15e a1f1ebbed8dbc153c0b84aa61ff08239 3b62a9ba6258f5610f83e264f31497b4
264499060ad9baabc47f8b02bb6d71ed 00110dc378146956c95447d3f3d0fbba 0151c568386b6677a2b4dc6f81e5dc18
d626b266905ef35882634df68532c125 9869e247e9c08b10d029934fc4b952f7 31fcefac66d7de9c7ec7485fe4494902
5493e99933b0a8117e08ec0f97cfc3d9 6ee2a4ca67b054bbfd3315bf85230577 473d06e8738db89854c066c47ae47740
a426e5e423bf4885294da481feaef723 78017731cf65fab074d5208952512eb1 9e25fc833f2290733e9344a5e83839eb
568e495abe525a218a2214cd3e071d12 4a29b54552d16b9a469c10528eff0aae c9d184ddd5a9f5e0cf8ce29a9abf691c
2db479ae78bd50d8882a8a178a6132ad 8ece5f042d5e447b5051b9eacb8d8f6f 9c0b53b4b3c307e87eaee08678141f66
abf248af69a6eae4bfd3eb2f129eeb94 0664da1668574b88b935f3027358aef4 aa4b9dc4bf337de90cd4fd3c467c6ab7
ea5c7f471faf6bde2b1ad7d4686d2287 2939b0183223fafc1723de4f52c43d35 7c3956ca5eeafc3e363e9d556546eb68
77c6077146f01c32b6b69d5f4ea9ffcf 37a6986cb8847edf0925f0f1309b54de a705f0e69da9a8f907241a2e923c8cc8
3dc47d1f29c448461e9e76ed904f6711 0d62bf01e6fc0e1a0d3c4751c5d3692b 8c03468bca7c669ee4fd5e084bbee7b5
528a5bb93baf2c9c4473cce5d0d22bd9 df6a301e95c95dad97ae0cc8c6913bd8 801189902c857f39e73591285e70b6db
e617346ac9c231bb3650ae34ccca0c5b 27d93437efb721aa401821dcec5adf89 89237d9ded9c5e78d8b1c9b166cc7342
4a6d8091bf5e7d651189fa94a250b14c 0e33f96055e7ae893ffc0e3dcf492902 e61c432b720b19d18ec8d84bdc63151b
f7e5aef549f782cf379055a608269b16 438d030fd0b7a54fa837f2ad201a6403 a590d3ee4fbf04e3247e0d27f286423f
5fe2c1a172fe93c4b15cd37caef9f538 2c97325cbd06b36eb2133dd08b3a017c 92c814227a6bca949ff0659f002ad39e
dce850110bd8328cfbd50841d6911d87 67f14984c7da791248e32bb5922583da 1938f2cf72d54ee97e94166fa91d2a36
74481e9646ed49fe0f6224301604698e 57fca5de98a9d6d8006438d0583d8a1d 9fecde1cefdc1cbed4763674d9575359
e3040c00eb28f15366ca73cbd872e740 7697009a6a831dfecca91c5993670f7a 5853542321f567a005d547a4f04759bd
5150d1772f50834a503e069a973fbd7c
"""


def _sip_vectors() -> list[bytes]:
    vectors = [bytes.fromhex(h) for h in SIP128.split()]
    assert len(vectors) == 64
    return vectors


def test_siphash128_reference_vectors():
    key = bytes(range(16))
    for n, want in enumerate(_sip_vectors()):
        out0, out1 = _keyed_py.siphash128(bytes(range(n)), key)
        assert out0.to_bytes(8, "little") + out1.to_bytes(8, "little") == want, n


# ---- construction ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(10.0, 100_000_000), (3.0, 333_333_334), (7, 142_857_143), (1e9, 1), (0.5, 2_000_000_000)],
)
def test_interval_is_rounded_up(impl, rate, expected):
    kb = impl.KeyedBuckets(rate, 2, 8)
    assert kb.interval_ns == expected
    assert kb.rate == float(rate)
    assert kb.burst == 2
    assert kb.max_keys == 8
    assert (kb.admitted, kb.rejected, kb.evicted, kb.inserted) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"rate": 0}, ValueError, "rate"),
        ({"rate": -1.0}, ValueError, "rate"),
        ({"rate": float("nan")}, ValueError, "rate"),
        ({"rate": float("inf")}, ValueError, "rate"),
        ({"rate": "10"}, TypeError, "rate"),
        ({"rate": True}, TypeError, "rate"),
        ({"burst": 0}, ValueError, "burst"),
        ({"burst": (1 << 31) + 1}, ValueError, "burst"),
        ({"burst": 2.0}, TypeError, "burst"),
        ({"burst": True}, TypeError, "burst"),
        ({"rate": 1e-9, "burst": 2}, ValueError, "burst / rate"),
        ({"max_keys": 0}, ValueError, "max_keys"),
        ({"max_keys": 1 << 32}, ValueError, "max_keys"),
        ({"max_keys": 8.0}, TypeError, "max_keys"),
        ({"secret": b"short"}, ValueError, "secret"),
        ({"secret": bytes(17)}, ValueError, "secret"),
        ({"secret": "0123456789abcdef"}, TypeError, "secret"),
        ({"on_full": 2}, ValueError, "on_full"),
        ({"on_full": -1}, ValueError, "on_full"),
        ({"on_full": 0.0}, ValueError, "on_full"),
    ],
)
def test_bad_constructor_args(impl, kwargs, exc, word):
    args = {"rate": 10.0, "burst": 3, "max_keys": 8, **kwargs}
    rate, burst, max_keys = args.pop("rate"), args.pop("burst"), args.pop("max_keys")
    with pytest.raises(exc, match=word):
        impl.KeyedBuckets(rate, burst, max_keys, **args)


def test_table_bounds_are_accepted(impl):
    assert impl.KeyedBuckets(10.0, 3, 1).max_keys == 1
    kb = impl.KeyedBuckets(1e9, 1 << 31, 16)  # burst * interval = 2**31 ns
    assert kb.available(b"k", 0) == 1 << 31


def test_default_secret_is_random_and_keeps_keys_apart(impl):
    a = impl.KeyedBuckets(10.0, 1, 64)
    assert a.try_acquire("k", T) == 0
    assert a.try_acquire("k", T) == IV
    assert a.available("other", T) == 1


# ---- one key: burst, refusal with the exact wait, refill ---------------------------


@pytest.mark.parametrize("t0", [0, 1, 123_456_789, T, (1 << 59) - 10 * IV])
def test_burst_then_exact_wait(impl, t0):
    kb = make(impl)
    assert kb.available("alice", t0) == 3
    assert [kb.try_acquire("alice", t0) for _ in range(3)] == [0, 0, 0]
    assert kb.try_acquire("alice", t0) == IV
    assert kb.try_acquire("alice", t0, 2) == 2 * IV
    assert kb.try_acquire("alice", t0 + IV - 1) == 1  # one ns short
    assert (kb.admitted, kb.rejected, kb.inserted) == (3, 3, 1)
    assert kb.available("alice", t0) == 0


def test_refill_one_token_per_interval(impl):
    kb = make(impl)
    for _ in range(3):
        assert kb.try_acquire(b"bob", T) == 0
    assert kb.available(b"bob", T + IV - 1) == 0
    assert kb.available(b"bob", T + IV) == 1
    assert kb.try_acquire(b"bob", T + IV) == 0
    assert kb.try_acquire(b"bob", T + IV) == IV
    assert kb.available(b"bob", T + 10 * IV) == 3  # never above burst
    assert kb.try_acquire(b"bob", T + 10 * IV, 3) == 0
    assert kb.try_acquire(b"bob", T + 10 * IV) == IV


def test_str_and_bytes_name_the_same_key(impl):
    kb = make(impl, burst=2)
    assert kb.try_acquire("café", T) == 0
    assert kb.try_acquire("café".encode(), T) == 0
    assert kb.try_acquire("café", T) == IV
    assert kb.inserted == 1


# ---- reserve / refund ------------------------------------------------------------


def test_reserve_waits_and_refunds(impl):
    kb = make(impl, burst=2)
    assert kb.reserve("k", T, 1, 0) == 0
    assert kb.reserve("k", T, 1, 0) == 0
    assert kb.reserve("k", T, 1, 0) == -IV  # refused: one interval needed
    assert kb.reserve("k", T, 1, IV) == IV  # admitted, sleep one interval
    assert kb.reserve("k", T, 1, IV) == -2 * IV
    assert kb.reserve("k", T, 2, 3 * IV) == 3 * IV
    assert (kb.admitted, kb.rejected) == (4, 2)
    kb.refund("k", T, 2)  # the 3*IV waiter was cancelled
    assert kb.reserve("k", T, 1, IV) == -2 * IV
    kb.refund("k", T, 1)
    assert kb.reserve("k", T, 1, IV) == IV
    kb.refund("k", T, 2)
    kb.refund("k", T, 2)  # more than was taken: stops at full
    assert kb.available("k", T) == 2


def test_reserve_max_wait(impl):
    kb = make(impl, burst=1)
    with pytest.raises(ValueError, match="max_wait_ns"):
        kb.reserve("k", T, 1, -1)
    assert kb.reserve("k", T, 1, 1 << 80) == 0  # clamped, not an error
    assert kb.reserve("k", T, 1, 1 << 80) == IV
    assert kb.rejected == 0


def test_refund_and_available_of_unknown_key_change_nothing(impl):
    kb = make(impl)
    kb.refund("ghost", T)
    assert kb.available("ghost", T) == 3
    assert kb.inserted == 0
    assert kb.count(T) == 0


# ---- argument checks -------------------------------------------------------------


def test_key_length_limit(impl):
    kb = make(impl)
    assert kb.try_acquire(b"x" * 64, T) == 0
    assert kb.try_acquire("é" * 32, T) == 0  # 64 UTF-8 bytes
    for key in (b"x" * 65, "x" * 65, "é" * 33):
        for call in (
            lambda k: kb.try_acquire(k, T),
            lambda k: kb.reserve(k, T, 1, 0),
            lambda k: kb.refund(k, T),
            lambda k: kb.available(k, T),
        ):
            with pytest.raises(ValueError, match="64 bytes"):
                call(key)
    assert kb.inserted == 2


@pytest.mark.parametrize("key", [None, 5, bytearray(b"k"), ("k",)])
def test_key_type(impl, key):
    with pytest.raises(TypeError, match="key"):
        make(impl).try_acquire(key, T)


def test_n_must_fit_the_burst(impl):
    kb = make(impl, burst=3)
    for n in (0, -1, 4):
        with pytest.raises(ValueError, match="n must be in"):
            kb.try_acquire("k", T, n)
        with pytest.raises(ValueError, match="n must be in"):
            kb.reserve("k", T, n, IV)
        with pytest.raises(ValueError, match="n must be in"):
            kb.refund("k", T, n)
    for n in (True, 1.0):
        with pytest.raises(TypeError, match="n must be an int"):
            kb.try_acquire("k", T, n)
    assert (kb.admitted, kb.rejected, kb.inserted) == (0, 0, 0)


class _Index:
    def __init__(self, v: int) -> None:
        self.v = v

    def __index__(self) -> int:
        return self.v


def test_clock_and_wait_must_be_integers(impl):
    kb = make(impl, burst=1)
    with pytest.raises(TypeError):
        kb.try_acquire("k", 1.5)
    with pytest.raises(TypeError):
        kb.reserve("k", T, 1, 1.5)
    assert (kb.admitted, kb.rejected, kb.inserted, kb.count(T)) == (0, 0, 0, 0)
    assert kb.try_acquire("k", _Index(T)) == 0  # anything with __index__ will do
    assert kb.reserve("k", T, 1, _Index(IV)) == IV
    assert kb.available("k", _Index(T + 2 * IV)) == 1


@pytest.mark.parametrize("now", [-1, 1 << 59])
def test_now_range(impl, now):
    kb = make(impl)
    for call in (
        lambda: kb.try_acquire("k", now),
        lambda: kb.reserve("k", now, 1, 0),
        lambda: kb.refund("k", now),
        lambda: kb.available("k", now),
        lambda: kb.count(now),
    ):
        with pytest.raises(ValueError, match="now_ns"):
            call()


# ---- a full table ------------------------------------------------------------------


def _fill(kb, names, now):
    """Give each key a distinct debt: key i holds i+1 tokens less than full."""
    for i, name in enumerate(names):
        for _ in range(i + 1):
            assert kb.try_acquire(name, now) == 0


def test_evict_takes_the_bucket_nearest_to_full(impl):
    # max_keys <= 16: every key's window is the whole table.
    kb = make(impl, burst=5, max_keys=4)
    names = ["a", "b", "c", "d"]
    _fill(kb, names, T)
    assert kb.count(T) == 4
    assert kb.try_acquire("e", T) == 0  # evicts "a", the one with the least debt
    assert (kb.inserted, kb.evicted) == (5, 1)
    assert kb.count(T) == 4
    assert kb.available("a", T) == 5  # forgotten: unknown keys are full
    assert [kb.available(x, T) for x in "bcde"] == [3, 2, 1, 4]
    assert kb.try_acquire("a", T) == 0  # now evicts "e" (debt 1)
    assert kb.evicted == 2
    assert kb.available("e", T) == 5
    assert [kb.available(x, T) for x in "abcd"] == [4, 3, 2, 1]


def test_full_buckets_are_reclaimed_before_anything_is_evicted(impl):
    kb = make(impl, burst=5, max_keys=4)
    _fill(kb, ["a", "b", "c", "d"], T)
    later = T + 2 * IV  # "a" (debt 1) and "b" (debt 2) are full again
    assert kb.count(later) == 2
    assert kb.try_acquire("e", later, 5) == 0
    assert kb.try_acquire("f", later, 5) == 0
    assert (kb.inserted, kb.evicted) == (6, 0)
    assert kb.available("a", later) == kb.available("b", later) == 5
    assert [kb.available(x, later) for x in "cdef"] == [4, 3, 0, 0]
    assert kb.count(later) == 4


def test_reject_refuses_new_keys_until_a_slot_is_full(impl):
    kb = make(impl, burst=5, max_keys=4, on_full=impl.KEYED_REJECT)
    _fill(kb, ["a", "b", "c", "d"], T)
    admitted, rejected = kb.admitted, kb.rejected
    assert kb.try_acquire("e", T) == IV  # "a" is full again one interval later
    assert kb.reserve("e", T, 1, 10 * IV) == -IV  # no bucket for it, whatever the wait
    assert kb.try_acquire("e", T + IV // 2) == IV // 2
    assert (kb.admitted, kb.rejected) == (admitted, rejected + 3)
    assert (kb.inserted, kb.evicted, kb.count(T)) == (4, 0, 4)
    assert kb.available("e", T) == 5  # still unknown
    assert [kb.available(x, T) for x in "abcd"] == [4, 3, 2, 1]  # untouched
    assert kb.try_acquire("a", T) == 0  # known keys are served as usual
    assert kb.try_acquire("e", T + 2 * IV) == 0  # "b" is full by now: reclaimed
    assert (kb.inserted, kb.evicted) == (5, 0)


def test_single_slot_table(impl):
    kb = make(impl, burst=2, max_keys=1)
    assert kb.try_acquire("a", T, 2) == 0
    assert kb.try_acquire("b", T) == 0  # evicts "a"
    assert kb.try_acquire("a", T, 2) == 0  # "a" starts full again
    assert (kb.inserted, kb.evicted) == (3, 2)
    rk = make(impl, burst=2, max_keys=1, on_full=impl.KEYED_REJECT)
    assert rk.try_acquire("a", T, 2) == 0
    assert rk.try_acquire("b", T) == 2 * IV
    assert rk.try_acquire("b", T + 2 * IV) == 0


def test_other_keys_do_not_disturb_a_bucket_when_capacity_suffices(impl):
    kb = make(impl, burst=4, max_keys=4096)
    for _ in range(4):
        assert kb.try_acquire("victim", T) == 0
    for i in range(1000):
        now = T + i
        kb.try_acquire(f"noise-{i}", now, 1 + i % 4)
        kb.reserve(f"noise-{i % 97}", now, 1, 2 * IV)
        kb.refund(f"noise-{i % 13}", now, 1)
        assert kb.try_acquire("victim", now) == IV - i
    assert kb.evicted == 0
    assert kb.inserted == 1001
    assert kb.available("victim", T + IV) == 1
    assert kb.try_acquire("victim", T + 4 * IV, 4) == 0


def test_count_is_live_buckets(impl):
    kb = make(impl, burst=2)
    assert kb.count(T) == 0
    kb.try_acquire("a", T)
    kb.try_acquire("b", T, 2)
    assert kb.count(T) == 2
    assert kb.count(T + IV - 1) == 2
    assert kb.count(T + IV) == 1  # "a" is full again
    assert kb.count(T + 2 * IV) == 0
    kb.refund("b", T, 2)
    assert kb.count(T) == 1


# ---- bit-for-bit agreement with csrc/rs_keyed.h ---------------------------------------

_M64 = 0xFFFF_FFFF_FFFF_FFFF


def _trace(impl, cap, mode, nkeys, ops, interval, burst, seed, div):
    """The operation sequence of the C driver the digests came from."""
    st = seed

    def rnd():
        nonlocal st
        st ^= (st << 13) & _M64
        st ^= st >> 7
        st ^= (st << 17) & _M64
        return st

    secret = bytes((i * 7 + 3) & 0xFF for i in range(16))
    kb = impl.KeyedBuckets(1e9 / interval, burst, cap, secret=secret, on_full=mode)
    assert kb.interval_ns == interval
    now = 1000
    out = []
    for _ in range(ops):
        k = rnd() % nkeys
        key = b"key-%d" % k
        if k % 7 == 3:
            key = bytes(ord("a") + (k + j) % 26 for j in range(64))
        r2 = rnd()
        step = r2 % (interval * 2 // div + 1)
        if (r2 >> 20) % 10 == 0:
            now = now - step if now > step else now
        else:
            now += step
        n = 1 + (r2 >> 32) % burst
        op = (r2 >> 40) % 10
        if op < 5:
            res = kb.try_acquire(key, now, n)
        elif op < 7:
            res = kb.reserve(key, now, n, (r2 >> 48) % (interval * 4))
        elif op < 8:
            kb.refund(key, now, n)
            res = 0
        elif op < 9:
            res = kb.available(key, now)
        else:
            res = kb.count(now)
        out.append(f"{op} {res}")
    out.append(f"{kb.admitted} {kb.rejected} {kb.evicted} {kb.inserted}")
    return out


@pytest.mark.parametrize(
    ("args", "digest", "counters"),
    [
        (
            (8, 0, 40, 3000, 1000, 3, 1, 50),
            "fde2493631ad1ce4d1d18f228eb44d3fec30135cf5f7060448d0c9dba7f18d5d",
            "1752 337 1650 1677",
        ),
        (
            (8, 1, 40, 3000, 1000, 3, 7, 50),
            "2bf0550629bf9ea46b313f26ceb18c30ecb36e04a70b46ce3b8db70f7568e7c0",
            "278 1801 0 100",
        ),
        (
            (17, 0, 100, 3000, 250, 5, 42, 1),
            "bbb272fc0332312a3eb3c6d97cf47be8b92ea6fdcbd29893d2206cd908bb7951",
            "2084 31 0 1769",
        ),
        (
            (3, 1, 10, 3000, 100, 1, 5, 1),
            "b5664f982480c74fc4791b0b099e4dc5f3782af983c96426c6d49473068c95f2",
            "1922 190 0 1417",
        ),
        (
            (1000, 0, 5000, 3000, 10, 7, 12345, 1),
            "7424471bf7543f97bb6d18a373e44a9b7f323bbcf6200402252ae847b6c85056",
            "2125 0 0 1588",
        ),
    ],
)
def test_same_results_as_the_c_table(impl, args, digest, counters):
    out = _trace(impl, *args)
    assert out[-1] == counters
    assert hashlib.sha256(("\n".join(out) + "\n").encode()).hexdigest() == digest
